"""SMMix: the region mixing and the loss against a port of the reference (ChenMnZ/SMMix ``smmix.py``,
``engine.py``), the method on a tiny timm ViT with the same draws, its token head (stepped in backward, resumed
exactly), validation, and a run on digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, DataBundle, PluginError, Split
from mixcli_plugins.methods.smmix import SMMix, smmix_images, smmix_loss, smmix_regions
from mixcli_plugins.models.timm_model import TimmModel
from resume_helpers import full_and_resumed

VIT = dict(arch="vit_tiny_patch16_224", img_size=8, patch_size=2,
           timm_args={"depth": 2, "embed_dim": 16, "num_heads": 2})
VIT_YAML = ("{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2, "
            "timm_args: {depth: 1, embed_dim: 16, num_heads: 2}}")


def tiny_vit(seed=0, k=4):
    torch.manual_seed(seed)
    return TimmModel((1, 8, 8), k, **VIT)


def make_ctx(x, y, k, model, seed=0, opt=None):
    data = DataBundle("classification", Split(x, y), Split(x, y), num_classes=k)
    ctx = Context(task="classification", num_classes=k, device=torch.device("cpu"), rng=np.random.default_rng(seed),
                  train=Split(x, y), fetch=lambda i: (x[i], y[i]), epochs=1, data=data, model=model)
    if opt is not None:
        ctx.extra["optimizer"] = opt
    return ctx


# ---------------------------------------------------------------------------- the reference, ported
def ref_batch_index_generate(x, idx):
    if len(x.size()) == 3:
        B, N, C = x.size()
        offset = torch.arange(B, dtype=torch.long).view(B, 1) * N
        return (idx + offset).reshape(-1)
    B, N = x.size()
    offset = torch.arange(B, dtype=torch.long).view(B, 1) * N
    return idx + offset


def ref_index_translate(rectangle_index, rectangle_size, token_size):
    total_index = torch.arange(token_size[0] * token_size[1]).reshape(1, 1, token_size[0], token_size[1])
    total_index_list = F.unfold(total_index.float(), rectangle_size, stride=1).transpose(1, 2).long()
    return total_index_list.index_select(dim=1, index=rectangle_index).squeeze(0)


def ref_smmix(inputs, attn, rectangle_size, side):
    """``SMMix.smmix`` (partners by flipping the batch; attn (B, side * side))."""
    inputs_side = inputs.shape[2]
    patch_size = inputs_side // side
    inputs = F.unfold(inputs, patch_size, stride=patch_size).transpose(1, 2)
    source_image = inputs.flip(0)
    attn = attn.reshape(-1, side, side).unsqueeze(1)
    rectangle_attn = F.unfold(attn, rectangle_size, stride=1)
    rectangle_attn = rectangle_attn.sum(dim=1)
    min_region_center_index = torch.argmin(rectangle_attn, dim=1)
    max_region_center_index = torch.argmax(rectangle_attn, dim=1)
    min_region_index = ref_index_translate(min_region_center_index, rectangle_size, (side, side))
    max_region_index = ref_index_translate(max_region_center_index, rectangle_size, (side, side))
    min_region_index = ref_batch_index_generate(inputs, min_region_index)
    max_region_index = ref_batch_index_generate(inputs, max_region_index.flip(0))
    B, N, C = inputs.shape
    inputs = inputs.reshape(B * N, C).clone()
    source_image = source_image.reshape(B * N, C)
    inputs[min_region_index] = source_image[max_region_index]
    inputs = inputs.reshape(B, N, C)
    inputs = F.fold(inputs.transpose(1, 2), inputs_side, patch_size, stride=patch_size)
    source_mask = torch.zeros_like(attn).bool().reshape(-1)
    source_mask[min_region_index] = True
    return inputs, source_mask.reshape(B, N)


def ref_soft_target_ce(x, target):
    return torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1).mean()


def ref_loss(outputs, target_result, source_result, clean, y, lam, smoothing, k):
    off = smoothing / k
    on = 1 - smoothing + off
    y1 = torch.full((len(y), k), off).scatter_(1, y.view(-1, 1), on)
    y2 = torch.full((len(y), k), off).scatter_(1, y.flip(0).view(-1, 1), on)
    mixed_target = y1 * lam + y2 * (1 - lam)
    mixed_pred = lam * clean + (1 - lam) * clean.flip(0)
    loss_cls = ref_soft_target_ce(outputs, mixed_target)
    loss_fine = 1 / 2 * (ref_soft_target_ce(target_result, y1) + ref_soft_target_ce(source_result, y2))
    loss_con = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(outputs, dim=1), F.softmax(mixed_pred, dim=1))
    return loss_cls + loss_fine + loss_con


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("grid,size", [(4, 1), (4, 3), (7, 2), (7, 5)])
def test_region_mixing_matches_the_reference(seed, grid, size):
    g = torch.Generator().manual_seed(seed)
    b, p = 6, 2
    x = torch.rand(b, 3, grid * p, grid * p, generator=g)
    attn = torch.rand(b, grid * grid, generator=g)
    flip = torch.arange(b).flip(0)
    dest, src = smmix_regions(attn.view(b, grid, grid), size, flip)
    ours, source = smmix_images(x, flip, dest, src, grid)
    want, want_source = ref_smmix(x, attn, (size, size), grid)
    torch.testing.assert_close(ours, want)
    assert torch.equal(source, want_source)


def test_the_loss_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    b, k = 6, 5
    z, zt, zs, z0 = (torch.randn(b, k, generator=g) for _ in range(4))
    y = torch.randint(0, k, (b,), generator=g)
    flip = torch.arange(b).flip(0)
    for lam in (0.75, 0.4375):
        teacher = lam * z0 + (1 - lam) * z0[flip]
        ours, _ = smmix_loss(z, zt, zs, teacher, y, y[flip], lam, 0.1)
        torch.testing.assert_close(ours, ref_loss(z, zt, zs, z0, y, lam, 0.1, k))


def test_the_method_pastes_the_partners_most_attended_square_over_the_least_attended():
    k, n = 4, 6
    model = tiny_vit(2)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    m = SMMix(switch_prob=1.0, token_head="shared")
    ctx = make_ctx(x, y, k, model, 7)
    m.setup(ctx)
    assert m.sides == [1, 2, 3]  # int(4 * 0.25) .. int(4 * 0.75)
    seen = []
    model.net.patch_embed.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    out = m(model, Batch(x, y, torch.arange(n)), ctx)
    assert len(seen) == 2  # the clean batch (attention), then the mixed one
    mixed_in = seen[-1]
    rng = np.random.default_rng(7)
    perm = torch.from_numpy(rng.permutation(n))
    assert rng.random() < 1.0
    side = [1, 2, 3][int(rng.integers(3))]
    model.eval()
    with torch.no_grad():
        z0, attn = model.patch_attention(x)
    model.train()
    assert float(out.lam[0]) == (16 - side * side) / 16
    dest, src = smmix_regions(attn, side, perm)
    xm, source = smmix_images(x, perm, dest, src, 4)
    torch.testing.assert_close(mixed_in, xm)
    assert int(source.sum(1)[0]) == side * side
    # every pasted patch is the partner's patch of its best square, in the same order
    patches = F.unfold(x, 2, stride=2).transpose(1, 2)
    mixed = F.unfold(mixed_in, 2, stride=2).transpose(1, 2)
    for i in range(n):
        torch.testing.assert_close(mixed[i, dest[i]], patches[perm[i], src[i]])
    # the loss: mixed CE + fine-grained CE (the classifier on the token means) + KL to the mixed clean logits
    logits, tokens = model.patch_tokens(mixed_in)
    tokens = tokens.reshape(n, 16, -1)
    mt, ms = (~source).float()[..., None], source.float()[..., None]
    zt, zs = model.classifier((tokens * mt).sum(1) / mt.sum(1)), model.classifier((tokens * ms).sum(1) / ms.sum(1))
    lam = (16 - side * side) / 16
    want, _ = smmix_loss(logits, zt, zs, lam * z0 + (1 - lam) * z0[perm], y, y[perm], lam, 0.1)
    torch.testing.assert_close(out.loss, want)


def test_the_separate_token_head_steps_in_backward_and_its_state_round_trips():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    m = SMMix(switch_prob=1.0)
    ctx = make_ctx(x, y, 4, model, 0, opt)
    m.setup(ctx)
    before = [p.detach().clone() for p in m.head.parameters()]
    out = m(model, Batch(x, y, torch.arange(6)), ctx)
    out.loss.backward()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.head.parameters()))
    assert all(p.grad is None for p in m.head.parameters())
    m2 = SMMix(switch_prob=1.0)
    m2.setup(make_ctx(x, y, 4, model, 0, opt))
    m2.load_state_dict(m.state_dict())
    for a, b in zip(m.head.parameters(), m2.head.parameters()):
        assert torch.equal(a, b)
    assert m2.head_opt.state_dict()["state"].keys() == m.head_opt.state_dict()["state"].keys()


def test_the_separate_head_needs_the_runs_optimizer():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    with pytest.raises(PluginError, match="token_head: shared"):
        SMMix().setup(make_ctx(x, y, 4, model))


def exp_file(method: str, model: str, out, epochs=1) -> str:
    return f"""\
    name: sm
    dataset: {{name: digits, fraction: 0.1}}
    model: {model}
    method: {method}
    train: {{epochs: {epochs}, batch_size: 32, optimizer: {{name: adamw, lr: 1.0e-3}}}}
    seeds: [0]
    out: {out}
    """


@pytest.mark.parametrize("opts,words", [({"switch_prob": 2}, "switch_prob"), ({"token_head": "x"}, "token_head"),
                                        ({"min_side_ratio": 0.8}, "min_side_ratio"), ({"alpha": 0}, "alpha")])
def test_bad_options_are_one_line_errors(opts, words):
    with pytest.raises(PluginError, match=words) as e:
        SMMix(**opts)
    assert "\n" not in str(e.value)


def test_validate_refuses_a_cnn_and_squares_that_do_not_fit(cli, write, tmp_path):
    code, text = cli("validate", write(exp_file("smmix", "{name: cnn, width: 4}", tmp_path / "o")))
    assert code == 2 and "patch attention" in text and "Traceback" not in text
    code, text = cli("validate", write(exp_file("{name: smmix, max_side_ratio: 1.0}", VIT_YAML, tmp_path / "o")))
    assert code == 2 and "squares of 1..4 tokens" in text and "Traceback" not in text


def test_resume_is_exact_and_runs_on_digits(cli, write, tmp_path, monkeypatch):
    """Interrupt a 2-epoch run after epoch 1 and resume it: the weights, the token head and its optimizer
    state equal those of the uninterrupted run."""
    p = write(exp_file("{name: smmix, switch_prob: 0.7}", VIT_YAML, tmp_path / "unused", epochs=2))
    assert cli("validate", p)[0] == 0
    a, b = full_and_resumed(cli, p, tmp_path, monkeypatch)
    for key in a["method"]["head"]:
        torch.testing.assert_close(a["method"]["head"][key], b["method"]["head"][key], rtol=0, atol=0)
    for i, st in a["method"]["head_opt"]["state"].items():
        torch.testing.assert_close(st["exp_avg"], b["method"]["head_opt"]["state"][i]["exp_avg"], rtol=0, atol=0)


def test_patch_attention_is_the_last_blocks_mean_attention_to_each_patch():
    m = tiny_vit().eval()
    x = torch.randn(3, 1, 8, 8)
    blk = m.net.blocks[-1]
    seen = {}
    h = blk.register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    logits, attn = m.patch_attention(x)
    h.remove()
    torch.testing.assert_close(logits, m(x))
    t = blk.norm1(seen["x"])
    b, n, d = t.shape
    qkv = blk.attn.qkv(t).reshape(b, n, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
    a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / (d // 2) ** 0.5, -1)
    torch.testing.assert_close(attn, a[:, :, 1:, 1:].mean((1, 2)).reshape(b, 4, 4))
    assert not attn.requires_grad


def test_smmix_in_a_users_loop_with_a_plain_timm_vit():
    """Mixer adapts a raw timm ViT (its patch hooks) and gives the token head the user's optimizer."""
    import timm

    from mixcli.mixing import Mixer
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, num_classes=4,
                            depth=1, embed_dim=16, num_heads=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mixer = Mixer("smmix", net, num_classes=4, seed=0, optimizer=opt, switch_prob=1.0)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    out = mixer(x, y)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()


def test_the_smmix_step_never_syncs_the_host():
    from mixcli.training.hostsync import engine_steps
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    yy = torch.arange(64) % 4
    data = DataBundle("classification", Split(x, yy), Split(x[:8].clone(), yy[:8].clone()), num_classes=4,
                      mean=(0.3,), std=(0.3,))
    for method, opts in (("smmix", {"switch_prob": 1.0}), ("tokenmix", {"switch_prob": 1.0}),
                         ("mixpro", {"maskmix_prob": 1.0})):
        c = engine_steps(method, opts, data, torch.device("cpu"), model="timm", model_opts=VIT, batch_size=16,
                         warmup=1, steps=2)
        assert c.syncs == 0, (method, c.where())
