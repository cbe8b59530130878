"""MixPro: MaskMix and PAL against a port of the reference (fistyee/MixPro ``utils.MaskMix`` and the PAL branch
of ``main.train_one_epoch``), on a tiny timm ViT with the same draws; validation; a run on digits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, DataBundle, PluginError, Split, soft_cross_entropy, soft_targets
from mixcli_plugins.methods.mixpro import MixPro
from mixcli_plugins.models.timm_model import TimmModel

VIT = dict(arch="vit_tiny_patch16_224", img_size=8, patch_size=2,
           timm_args={"depth": 2, "embed_dim": 16, "num_heads": 2})
VIT_YAML = ("{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2, "
            "timm_args: {depth: 1, embed_dim: 16, num_heads: 2}}")


def tiny_vit(seed=0, k=4):
    torch.manual_seed(seed)
    return TimmModel((1, 8, 8), k, **VIT)


def make_ctx(x, y, k, model, seed=0):
    data = DataBundle("classification", Split(x, y), Split(x, y), num_classes=k)
    return Context(task="classification", num_classes=k, device=torch.device("cpu"), rng=np.random.default_rng(seed),
                   train=Split(x, y), fetch=lambda i: (x[i], y[i]), epochs=1, data=data, model=model)


def seen_inputs(model):
    """Record every input of the ViT (its ``net``)."""
    seen = []
    model.net.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    return seen


# ---------------------------------------------------------------------------- the reference, ported
def ref_one_hot(x, num_classes, on_value=1., off_value=0.):
    x = x.long().view(-1, 1)
    return torch.full((x.size()[0], num_classes), off_value).scatter_(1, x, on_value)


def ref_mixup_target(target, old_target, num_classes, lam, smoothing=0.1):
    off_value = smoothing / num_classes
    on_value = 1. - smoothing + off_value
    y1 = ref_one_hot(target, num_classes, on_value=on_value, off_value=off_value)
    y2 = ref_one_hot(old_target, num_classes, on_value=on_value, off_value=off_value)
    return y1 * lam + y2 * (1. - lam)


def ref_maskmix(rng, samples, flip_samples, alpha, mask_num, scale_, scale, targets, flip_targets, label_smoothing,
                num_classes):
    """``utils.MaskMix``, ``np.random`` replaced by ``rng`` (beta, then one permutation per row)."""
    batch_size = samples.size(0)
    token_count = mask_num ** 2
    ratio = rng.beta(alpha, alpha)
    mask_ratio = [ratio for i in range(batch_size)]
    mask_count = [int(np.ceil(token_count * mask_ratio[i])) for i in range(batch_size)]
    mask_ratio = [mask_count[i] / token_count for i in range(batch_size)]
    mask_idx = [rng.permutation(token_count)[:mask_count[i]] for i in range(batch_size)]
    mask = np.zeros((batch_size, token_count), dtype=int)
    for i in range(batch_size):
        mask[i][mask_idx[i]] = 1
    mask = [mask[i].reshape((mask_num, mask_num)) for i in range(batch_size)]
    mask_ = [mask[i].repeat(scale_, axis=0).repeat(scale_, axis=1) for i in range(batch_size)]
    mask = [mask[i].repeat(scale, axis=0).repeat(scale, axis=1) for i in range(batch_size)]
    mask = torch.from_numpy(np.array(mask))
    mask = mask.unsqueeze(1).repeat(1, samples.shape[1], 1, 1)
    mask = mask[:, :, :samples.shape[2], :samples.shape[2]]
    samples = samples * mask + flip_samples * (1 - mask)
    mask_ratio = torch.Tensor(mask_ratio)
    ratio = mask_ratio.unsqueeze(1).repeat(1, num_classes)
    targets = ref_mixup_target(targets, flip_targets, num_classes, ratio, label_smoothing)
    return samples, targets, np.array(mask_), mask_ratio


def ref_pal(mask, mask_ratio, attn, outputs, mix_targets, patch_num):
    """The ``PAL_ATTN`` branch: lam from the attention and the cosine factor (attn (B, N) flattened)."""
    lam_old = mask_ratio
    mask = torch.from_numpy(mask)
    mask = mask[:, :patch_num, :patch_num]
    mask = torch.flatten(mask, 1)
    w1, w2 = torch.sum((mask) * attn, dim=1), torch.sum((1 - mask) * attn, dim=1)
    lam = w1 / (w1 + w2)
    sim = torch.cosine_similarity(mix_targets, F.softmax(outputs, dim=-1), dim=1)
    return (sim) * lam + (1. - sim) * lam_old


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mask_size", [None, 4])
def test_maskmix_and_pal_match_the_reference(seed, mask_size):
    k, n = 4, 6
    model = tiny_vit(seed)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    m = MixPro(maskmix_prob=1.0, mask_size=mask_size)
    ctx = make_ctx(x, y, k, model, seed)
    m.setup(ctx)
    seen = seen_inputs(model)
    out = m(model, Batch(x, y, torch.arange(n)), ctx)

    rng = np.random.default_rng(seed)
    assert rng.random() < 1.0  # the MaskMix-or-switch draw
    perm = torch.from_numpy(rng.permutation(n))
    size = 2 if mask_size is None else mask_size  # a quarter of 8 px, a multiple of the 2 px patch
    mask_num, scale_ = math.ceil(8 / size), size // 2
    xm, targets, mask_, ratio = ref_maskmix(rng, x, x[perm], 1.0, mask_num, scale_, size, y, y[perm], 0.1, k)
    torch.testing.assert_close(seen[-1], xm.float())
    with torch.no_grad():
        logits, attn = model.class_attention(xm.float())
    want = ref_pal(mask_, ratio, attn.reshape(n, -1), logits, targets, 4)
    torch.testing.assert_close(out.lam, want.float())
    torch.testing.assert_close(out.logits, logits)
    assert out.smoothing == 0.0 and torch.equal(out.y_b, y[perm])
    # the loss plugin's soft CE is the reference's lam CE(z, y_a) + (1 - lam) CE(z, y_b)
    ref_loss = (want * F.cross_entropy(logits, y, reduction="none")
                + (1 - want) * F.cross_entropy(logits, y[perm], reduction="none")).mean()
    torch.testing.assert_close(soft_cross_entropy(out.logits, soft_targets(out, k)), ref_loss)


def test_maskmix_alone_keeps_the_area_label_and_smoothing():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    m = MixPro(maskmix_prob=1.0, pal=False)
    ctx = make_ctx(x, y, 4, model, 3)
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(6)), ctx)
    assert out.smoothing == 0.1 and out.lam.unique().numel() == 1
    assert float(out.lam[0]) * 16 == round(float(out.lam[0]) * 16)  # whole cells of a 4x4 grid


def test_the_factor_keeps_its_gradient_unless_detached():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    for detach in (False, True):
        m = MixPro(maskmix_prob=1.0, pal_detach=detach)
        ctx = make_ctx(x, y, 4, model)
        m.setup(ctx)
        assert m(model, Batch(x, y, torch.arange(6)), ctx).lam.requires_grad is (not detach)


def test_without_maskmix_it_is_the_mixup_cutmix_switch():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    m = MixPro(maskmix_prob=0.0)
    ctx = make_ctx(x, y, 4, model)
    m.setup(ctx)
    lams = [m(model, Batch(x, y, torch.arange(6)), ctx).lam for _ in range(8)]
    assert all(lam.unique().numel() == 1 and 0 <= float(lam[0]) <= 1 for lam in lams)


@pytest.mark.parametrize("opts,words", [({"maskmix_prob": 1.5}, "maskmix_prob"),
                                        ({"maskmix_alpha": 0}, "maskmix_alpha"),
                                        ({"mask_size": 0}, "mask_size"), ({"pal": "yes"}, "pal")])
def test_bad_options_are_one_line_errors(opts, words):
    with pytest.raises(PluginError, match=words) as e:
        MixPro(**opts)
    assert "\n" not in str(e.value)


def test_a_mask_off_the_patch_grid_is_refused():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    with pytest.raises(PluginError, match="multiple of the model's patch size 2"):
        MixPro(mask_size=3).setup(make_ctx(x, y, 4, model))


def exp_file(method: str, model: str, out) -> str:
    return f"""\
    name: mp
    dataset: {{name: digits, fraction: 0.1}}
    model: {model}
    method: {method}
    train: {{epochs: 1, batch_size: 32, optimizer: {{name: adamw, lr: 1.0e-3}}}}
    seeds: [0]
    out: {out}
    """


def test_validate_refuses_a_cnn_and_a_bad_mask_in_one_line(cli, write, tmp_path):
    code, text = cli("validate", write(exp_file("mixpro", "{name: cnn, width: 4}", tmp_path / "o")))
    assert code == 2 and "class-token attention" in text and "Traceback" not in text
    code, text = cli("validate", write(exp_file("{name: mixpro, mask_size: 3}", VIT_YAML, tmp_path / "o")))
    assert code == 2 and "patch size" in text and "Traceback" not in text
    code, text = cli("validate", write(exp_file("{name: mixpro, maskmix_prob: 2}", VIT_YAML, tmp_path / "o")))
    assert code == 2 and "maskmix_prob" in text


def test_runs_on_digits(cli, write, tmp_path):
    p = write(exp_file("{name: mixpro, maskmix_prob: 0.7}", VIT_YAML, tmp_path / "out"))
    assert cli("validate", p)[0] == 0
    code, text = cli("run", p, "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    assert list(pd.read_parquet(tmp_path / "out" / "runs")["status"]) == ["finished"]
