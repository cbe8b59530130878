"""The timm model plugin: stages from timm's feature API, local checkpoints, errors, method hooks, the CLI."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mixcli.api import PluginError
from mixcli_plugins.models.timm_model import TimmModel

VIT = dict(arch="vit_tiny_patch16_224", img_size=8, patch_size=2, timm_args={"depth": 2, "embed_dim": 16, "num_heads": 2})
SMALL = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}  # a narrow ResNet: fast tests
RESNET = dict(arch="resnet18", small_stem=True, timm_args=SMALL)


def build(spec, seed=0, classes=4):
    torch.manual_seed(seed)
    return TimmModel((1, 8, 8), classes, **spec)


@pytest.mark.parametrize("spec", [RESNET, VIT], ids=["resnet18", "vit"])
def test_every_position_round_trips_in_train_mode(spec):
    """forward_from(forward_to(x, k), k) is the plain forward: same logits, same parameter gradients and the
    same BatchNorm statistics afterwards (the re-entry runs no extra statistics update)."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = build(spec).train()
    init = copy.deepcopy(ref)
    out = ref(x)
    out.square().sum().backward()
    for k in range(ref.embed_position + 1):
        m = copy.deepcopy(init)
        got = m.forward_from(m.forward_to(x, k), k)
        torch.testing.assert_close(got, out)
        got.square().sum().backward()
        for (name, a), b in zip(m.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=f"position {k}: gradient of {name}")
        for (name, a), b in zip(m.named_buffers(), ref.buffers()):
            torch.testing.assert_close(a, b, msg=f"position {k}: buffer {name}")


def test_positions_follow_timm_feature_info():
    m = build(RESNET)
    x = torch.randn(2, 1, 8, 8)
    names = [f["module"] for f in m.net.feature_info]
    assert names == ["act1", "layer1", "layer2", "layer3", "layer4"] and m.num_stages == 5
    assert m.forward_to(x, 3).shape == (2, 16, 4, 4)                   # layer2
    torch.testing.assert_close(m.forward_to(x, 5), m.net.forward_features(x))
    assert m.forward_to(x, m.embed_position).shape == (2, 64)
    assert m.classifier is m.net.get_classifier()


def test_checkpoint_loads_state_dicts_and_safetensors(tmp_path):
    src = build(RESNET, seed=1)
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(src.net.state_dict(), pt)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.net.state_dict().items()}, str(st))
    x = torch.randn(3, 1, 8, 8)
    for path in (pt, st):
        m = build({**RESNET, "checkpoint": str(path)}, seed=2).eval()
        torch.testing.assert_close(m(x), src.eval()(x))
    other = build({**RESNET, "checkpoint": str(pt)}, seed=2, classes=7)  # another head: backbone only
    torch.testing.assert_close(other.net.layer4[0].conv2.weight, src.net.layer4[0].conv2.weight)
    assert other.classifier.out_features == 7


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(PluginError, match="no such file"):
        build({**RESNET, "checkpoint": str(tmp_path / "missing.pt")})
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(PluginError, match="does not fit"):
        build({**RESNET, "checkpoint": str(tmp_path / "bad.pt")})


@pytest.mark.parametrize("spec, words", [
    ({"arch": "resnet_nope"}, "not a timm architecture"),
    ({"arch": "resnet18", "patch_size": 4}, "does not take"),
    ({"arch": "vit_tiny_patch16_224", "small_stem": True, "img_size": 8, "patch_size": 2}, "small_stem"),
    ({"arch": "resnet18", "timm_args": {"in_chans": 3}}, "set by mixcli"),
])
def test_bad_options_name_the_problem(spec, words):
    with pytest.raises(PluginError, match=words) as e:
        TimmModel((1, 8, 8), 4, **spec)
    assert "\n" not in str(e.value)


def test_class_attention_is_the_last_blocks_class_token_row():
    m = build(VIT).eval()
    x = torch.randn(3, 1, 8, 8)
    blk = m.net.blocks[-1]
    seen = {}
    h = blk.register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    logits, attn = m.class_attention(x)
    h.remove()
    torch.testing.assert_close(logits, m(x))
    t = blk.norm1(seen["x"])
    b, n, d = t.shape
    qkv = blk.attn.qkv(t).reshape(b, n, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    a = torch.softmax(q @ k.transpose(-2, -1) / (d // 2) ** 0.5, -1)
    want = a[:, :, 0, 1:].mean(1).reshape(b, 4, 4)
    torch.testing.assert_close(attn, want)
    assert m._last_attention().fused_attn == blk.attn.fused_attn  # restored


def test_class_activation_weights_reproduce_the_logits():
    m = build(RESNET).eval()
    x = torch.randn(3, 1, 8, 8)
    logits, fmap, w, b = m.class_activation(x)
    torch.testing.assert_close(logits, fmap.mean((2, 3)) @ w.T + b)
    with pytest.raises(PluginError, match="spatial"):
        build(VIT).class_activation(x)


def test_run_from_yaml_on_digits(cli, write, tmp_path):
    p = write(f"""\
    name: timm-digits
    dataset: {{name: digits, fraction: 0.1}}
    model: {{name: timm, arch: resnet18, small_stem: true,
             timm_args: {{layers: [1, 1, 1, 1], channels: [8, 16, 32, 64], stem_width: 8}}}}
    method: erm
    train: {{epochs: 1, batch_size: 32, optimizer: {{name: sgd, lr: 0.05}}}}
    seeds: [0]
    grid:
      - method: [manifold_mixup]
      - method: [transmix]
        model: [{{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2,
                  timm_args: {{depth: 1, embed_dim: 16, num_heads: 2}}}}]
    out: {tmp_path / 'out'}
    """)
    code, text = cli("run", p, "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert sorted(runs["status"]) == ["finished", "finished"]


def test_validate_rejects_an_unknown_option_and_list_says_how_to_see_archs(cli, write):
    p = write("""\
    name: x
    dataset: {name: digits}
    model: {name: timm, arch: resnet18, patchsize: 4}
    method: erm
    train: {epochs: 1, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
    """)
    code, text = cli("validate", p)
    assert code == 2 and "patchsize" in text
    code, text = cli("validate", p, "--set", "model={name: timm, arch: resnet_nope}")
    assert code == 2 and "not a timm architecture" in text and "Traceback" not in text
    code, text = cli("list", "models")
    assert code == 0 and "timm" in text
    assert "timm.list_models" in TimmModel.description()  # the line `mixcli list models` shows


def test_feature_level_methods_run_on_timm_stages():
    """manifold_mixup mixes at timm's feature levels and alignmix aligns its last map (2x2 on 16x16 inputs)."""
    import numpy as np

    from mixcli.api import Batch, Context, Split
    from mixcli_plugins.methods.alignmix import AlignMix
    from mixcli_plugins.methods.manifold_mixup import ManifoldMixup
    torch.manual_seed(0)
    m = TimmModel((1, 16, 16), 4, **RESNET)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 4
    ctx = Context(task="classification", num_classes=4, device=torch.device("cpu"), rng=np.random.default_rng(0),
                  train=Split(x, y), fetch=lambda i: (x[i], y[i]), epochs=1, model=m)
    for method in (ManifoldMixup(positions=[0, 1, 2, 3, 4, 5]), AlignMix(input_prob=0.0)):
        method.setup(ctx)
        out = method(m, Batch(x, y, torch.arange(8)), ctx)
        assert out.logits.shape == (8, 4) and torch.isfinite(out.logits).all()
        F.cross_entropy(out.logits, y).backward()
