"""SAMix: its MixBlock, mask loss, mask_adjust and one whole step against ports of OpenMixup's code paths
(``PixelMixBlock`` with the SAMix config, ``PixelMixBlock.mask_loss``, ``AutoMixup.pixel_mixup`` /
``forward_train``) on random tensors with the same draws; bit-exact resume; validate's refusals.

The ports follow the reference line by line (its [N, 2, H, W] mask layout, boolean-index updates, the
ConvNeck's BatchNorm written out); the implementation under test is batched and written differently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixcli.api import Batch, PluginError
from mixcli.mixing.learned import SAMixBlock, adjust_mask_mean, mixblock_mask_loss, rescale_lam
from mixcli_plugins.methods.samix import SAMix
from mixcli_plugins.models.cnn import CNN

from test_methods_dynamic import make_ctx
from resume_helpers import full_and_resumed


# ------------------------------------------------------------------------------------------ reference ports
def om_rescale_lam_mult(lam, k=1):
    """OpenMixup ``PixelMixBlock.rescale_lam_mult``."""
    assert k >= 0
    k += 1
    lam = float(lam)
    return 1 / (k - 2 / 3) * (4 / 3 * math.pow(lam, 3) - 2 * lam ** 2 + k * lam)


def _conv1x1(conv, x):
    out = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def om_conv_neck(neck, x):
    """OpenMixup ``ConvNeck`` (2 layers, kernel 1, no bias, BN in training mode, ELU, no last norm)."""
    c1, bn, _, c2 = neck
    t = _conv1x1(c1, x)
    mean = t.mean(dim=(0, 2, 3), keepdim=True)
    var = ((t - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    t = (t - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    t = torch.where(t > 0, t, torch.exp(t) - 1)  # ELU
    return _conv1x1(c2, t)


def om_pixel_mixblock(block, x, lam, index, scale_factor, mode="bilinear", lam_mul=1.0, lam_mul_k=0.25):
    """OpenMixup ``PixelMixBlock.forward`` with the SAMix CIFAR config (lam_mul, lam_residual, lam_mul_k,
    value_neck_cfg ConvNeck, x_qk_concat), weights taken from ``block``. Returns the [N, 2, H, W] mask."""
    n, _, h, w = x.size()
    x_lam = x
    x_lam_ = x[index, :]
    lam_rescale = om_rescale_lam_mult(lam, lam_mul_k)
    x_lam = x_lam * (1 + lam_rescale * lam_mul)
    x_lam_ = x_lam_ * (1 + (1 - lam_rescale) * lam_mul)
    v_ = x_lam_
    v_ = om_conv_neck(block.value, v_).view(n, 1, -1)
    v_ = v_.permute(0, 2, 1)
    x_lam = torch.cat([x_lam, x_lam_], dim=1)
    x_lam_ = x_lam
    inter = block.query.weight.shape[0]
    q_x = _conv1x1(block.query, x_lam).view(n, inter, -1).permute(0, 2, 1)
    k_x = _conv1x1(block.key, x_lam_).view(n, inter, -1)
    pairwise_weight = torch.matmul(q_x.type(torch.float32), k_x.type(torch.float32))
    pairwise_weight /= q_x.shape[-1] ** 0.5
    pairwise_weight = pairwise_weight.softmax(dim=-1)
    mask_lam_ = torch.matmul(pairwise_weight, v_).view(n, 1, h, w)
    mask_lam_ = F.interpolate(mask_lam_, scale_factor=scale_factor, mode=mode)
    mask_lam_ = torch.sigmoid(mask_lam_)
    return torch.cat([1 - mask_lam_, mask_lam_], dim=1)


def om_mask_loss(mask, lam, mode="L1+Variance", margin=0.1):
    """OpenMixup ``PixelMixBlock.mask_loss``."""
    n, k, h, w = mask.size()
    if k > 1:
        mask = mask[:, 1, :, :].unsqueeze(1)
    m_mean = mask.sum() / (n * h * w)
    if mode == "L1":
        return torch.clamp(torch.abs(1 - m_mean - lam) - margin, min=0.).mean()
    if mode == "L1+Variance":
        return torch.clamp(torch.abs(1 - m_mean - lam) - margin, min=0.).mean() - \
            2 * torch.clamp((torch.sum((mask - m_mean) ** 2) / (n * h * w)), min=0.)
    return torch.clamp((1 - m_mean - lam) ** 2 - margin ** 2, min=0.).mean() - \
        2 * torch.clamp((torch.sum((mask - m_mean) ** 2) / (n * h * w)), min=0.)


def om_mask_adjust(mask_bb, lam0):
    """The ``mask_adjust`` branch of OpenMixup ``AutoMixup.pixel_mixup`` (``lam[0]`` as the reference)."""
    mask_bb = mask_bb.clone()
    epsilon = 1e-8
    _mask = mask_bb[:, 0, :, :].squeeze()
    _mask = _mask.clamp(min=epsilon, max=1 - epsilon)
    _mean = _mask.mean(dim=[1, 2]).squeeze()
    idx_larg = _mean[:] > lam0 + epsilon
    idx_less = _mean[:] < lam0 - epsilon
    mask_bb[idx_larg == True, 0, :, :] = \
        _mask[idx_larg == True, :, :] * (lam0 / _mean[idx_larg == True].view(-1, 1, 1))  # noqa: E712
    mask_bb[idx_larg == True, 1, :, :] = 1 - mask_bb[idx_larg == True, 0, :, :]  # noqa: E712
    mask_bb[idx_less == True, 1, :, :] = \
        (1 - _mask[idx_less == True, :, :]) * ((1 - lam0) / (1 - _mean[idx_less == True].view(-1, 1, 1)))  # noqa: E712
    mask_bb[idx_less == True, 0, :, :] = 1 - mask_bb[idx_less == True, 1, :, :]  # noqa: E712
    return mask_bb


def _randomise(block, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------------------ the MixBlock
def test_rescale_lam_is_the_references_and_fixes_0_half_1():
    for lam in (0.0, 0.13, 0.5, 0.77, 1.0):
        for k in (0.0, 0.25, 3.0):
            assert rescale_lam(lam, k) == pytest.approx(om_rescale_lam_mult(lam, k), abs=1e-12)
    assert [rescale_lam(v, 0.25) for v in (0, 0.5, 1)] == pytest.approx([0, 0.5, 1])


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.9])
def test_samix_block_agrees_with_the_reference_pixel_mixblock(lam):
    torch.manual_seed(0)
    block = SAMixBlock(8, reduction=2)
    assert block.value[0].weight.shape == (4, 8, 1, 1) and block.value[0].bias is None  # hidden C/2, no bias
    _randomise(block)
    with torch.no_grad():  # BatchNorm's affine parameters as trained ones, not 1 / 0
        block.value[1].weight.uniform_(0.5, 1.5)
    h = torch.randn(6, 8, 4, 4)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    m = block(h, lam, perm, (16, 16), "bilinear")
    want = om_pixel_mixblock(block, h, lam, perm, 4)
    torch.testing.assert_close(m, want[:, 1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(1 - m, want[:, :1], atol=1e-5, rtol=1e-4)


def test_samix_block_initialisation_is_the_references():
    block = SAMixBlock(64)
    for mod in block.modules():
        if isinstance(mod, nn.Conv2d):
            assert float(mod.weight.std()) == pytest.approx(0.01, rel=0.3)
            assert mod.bias is None or torch.equal(mod.bias, torch.zeros_like(mod.bias))
    assert torch.equal(block.value[1].weight, torch.ones(32))
    linear = SAMixBlock(8, value_hidden=0, x_qk_concat=False)
    assert isinstance(linear.value, nn.Conv2d) and linear.key is None and linear.query.in_channels == 8


@pytest.mark.parametrize("mode", ["L1", "L1+Variance", "L2+Variance"])
def test_mask_loss_is_the_references(mode):
    g = torch.Generator().manual_seed(1)
    m = torch.rand(5, 1, 6, 6, generator=g)
    for lam in (0.1, 0.45, 0.8):
        got = mixblock_mask_loss(m, lam, mode, 0.1)
        torch.testing.assert_close(got, om_mask_loss(torch.cat([1 - m, m], 1), lam, mode, 0.1))


def test_mask_adjust_is_the_references_and_hits_lambda():
    g = torch.Generator().manual_seed(2)
    m = torch.rand(7, 1, 5, 5, generator=g) ** torch.linspace(0.3, 3, 7).view(7, 1, 1, 1)  # various means
    for lam in (0.2, 0.5, 0.7):
        got = adjust_mask_mean(m, lam)
        want = om_mask_adjust(torch.cat([1 - m, m], 1), lam)
        torch.testing.assert_close(got, want[:, 1:], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close((1 - got).mean(dim=(1, 2, 3)), torch.full((7,), lam), atol=1e-5, rtol=0)
        assert (got >= 0).all() and (got <= 1).all()


# ------------------------------------------------------------------------------------------ one step
def _setup(**opts):
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = SAMix(**opts)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.extra["optimizer"] = opt
    m.setup(ctx)
    m.start_epoch(1, ctx)
    return m, model, ctx, opt, x8.float() / 255, y


def om_samix_loss(m, model, x, y, seed, mask_adjust, lam_margin, mask_w=0.1):
    """OpenMixup ``AutoMixup.forward_train`` (SAMix config) given the draws of ``np.random.default_rng(seed)``
    in the method's order (lambdas, index_bb, index_mb, the mask_adjust uniform), with its modules."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(2.0, 2.0, 2)
    index_bb = torch.from_numpy(rng.permutation(x.shape[0]))
    index_mb = torch.from_numpy(rng.permutation(x.shape[0]))
    u = rng.random()
    feature = m.k.forward_to(x, m.pos)
    scale = x.shape[-1] // feature.shape[-1]
    mask_mb = om_pixel_mixblock(m.block, feature, lam[0], index_mb, scale)
    mask_bb = om_pixel_mixblock(m.block, feature, lam[1], index_bb, scale).detach()
    if mask_adjust > u:
        mask_bb = om_mask_adjust(mask_bb, lam[0])
    if lam_margin >= lam[1] or lam_margin >= 1 - lam[1]:
        mask_bb[:, 0, :, :] = lam[1]
        mask_bb[:, 1, :, :] = 1 - lam[1]
    mask_loss = om_mask_loss(mask_mb, lam[0]) * mask_w
    img_mix_mb = x * mask_mb[:, 0, :, :].unsqueeze(1) + x[index_mb, :] * mask_mb[:, 1, :, :].unsqueeze(1)
    img_mix_bb = x * mask_bb[:, 0, :, :].unsqueeze(1) + x[index_bb, :] * mask_bb[:, 1, :, :].unsqueeze(1)
    pos = model.embed_position
    pred_k = m.head_mix_k(m.k.forward_to(img_mix_mb, pos))
    loss_mix_k = F.cross_entropy(pred_k, y) * lam[0] + F.cross_entropy(pred_k, y[index_mb]) * (1 - lam[0])
    loss_one_q = F.cross_entropy(model(x), y)
    pred_q = m.head_mix_q(model.forward_to(img_mix_bb, pos))
    loss_mix_q = F.cross_entropy(pred_q, y) * lam[1] + F.cross_entropy(pred_q, y[index_bb]) * (1 - lam[1])
    return loss_mix_q + loss_one_q + loss_mix_k + mask_loss, lam, u


@pytest.mark.parametrize("mask_adjust, lam_margin", [(0.0, 0.0), (1.0, 0.0), (0.25, 0.0), (1.0, 0.45)])
def test_a_step_agrees_with_the_reference_forward_train(mask_adjust, lam_margin):
    m, model, ctx, opt, x, y = _setup(mask_adjust=mask_adjust, lam_margin=lam_margin)
    out = m(model, Batch(x, y, torch.arange(16)), ctx)
    want, lam, u = om_samix_loss(m, model, x, y, 0, mask_adjust, lam_margin)
    torch.testing.assert_close(out.loss, want.to(out.loss.dtype), atol=1e-5, rtol=1e-5)


def test_mask_adjust_lam_backbone_uses_the_backbones_lambda():
    m, model, ctx, opt, x, y = _setup(mask_adjust=1.0, lam_margin=0.0, mask_adjust_lam="backbone")
    h = m.k.forward_to(x, m.pos)
    perm = torch.randperm(16)
    _, m_q = m.masks(h, 0.3, 0.6, perm, perm, (8, 8), adjust=True)
    torch.testing.assert_close((1 - m_q).mean(dim=(1, 2, 3)), torch.full((16,), 0.6), atol=1e-5, rtol=0)
    m.adjust_lam = "mixblock"
    _, m_q = m.masks(h, 0.3, 0.6, perm, perm, (8, 8), adjust=True)
    torch.testing.assert_close((1 - m_q).mean(dim=(1, 2, 3)), torch.full((16,), 0.3), atol=1e-5, rtol=0)


def test_the_mixblock_trains_in_the_backward_pass_and_the_encoder_does_not():
    m, model, ctx, opt, x, y = _setup(lam_margin=0.0)
    before = [p.detach().clone() for p in m.block.parameters()]
    bn_before = m.block.value[1].running_mean.clone()
    out = m(model, Batch(x, y, torch.arange(16)), ctx)
    assert not torch.equal(m.block.value[1].running_mean, bn_before)  # the value path's BatchNorm runs
    opt.zero_grad()
    out.loss.backward()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.block.parameters()))
    assert all(p.grad is None for p in m.block.parameters())
    assert all(p.grad is None for p in m.k.parameters()) and all(p.grad is None for p in m.head_mix_k.parameters())
    assert set(m.state_dict()) >= {"k", "block", "opts", "head_mix_q", "head_mix_k", "head_opt"}
    assert "value.1.running_var" in m.state_dict()["block"]


@pytest.mark.parametrize("opts, message", [
    ({"mask_adjust": 1.5}, "mask_adjust must be in [0, 1]"),
    ({"mask_loss_mode": "L3"}, "mask_loss_mode must be one of L1, L1+Variance, L2+Variance"),
    ({"mask_adjust_lam": "q"}, "mask_adjust_lam must be one of mixblock, backbone"),
    ({"lam_mul": 2}, "lam_mul must be in [0, 1]"),
    ({"value_hidden": -1}, "value_hidden must be an integer >= 0"),
    ({"upsampling": "area"}, "upsampling must be one of nearest, bilinear, bicubic"),
    ({"heads": "two"}, "heads must be one of reference, shared"),
    ({"lam_residual": "yes"}, "lam_residual must be true or false"),
])
def test_bad_options(opts, message):
    with pytest.raises(PluginError, match=message.replace("[", r"\[").replace("+", r"\+")):
        SAMix(**opts)


# ------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("dataset, model, method, message", [
    ("{name: digits}", "{name: cnn}", "{name: samix, mask_adjust: 2}", "mask_adjust must be in [0, 1], got 2"),
    ("{name: digits}", "{name: mlp}", "samix", "samix needs a spatial feature map (C, H, W) at position 1"),
    ("{name: digits}", "{name: cnn}", "{name: samix, mask_position: 7}", "mask_position 7 is beyond this model's"),
    ("{name: diabetes}", "{name: mlp}", "samix", "supports task classification, not regression"),
    ("{name: digits}", "{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2}", "samix",
     "samix needs a spatial feature map (C, H, W)"),
])
def test_validate_refuses_in_one_line(cli, write, dataset, model, method, message):
    if "timm" in model:
        pytest.importorskip("timm")
    task = "regression" if "diabetes" in dataset else "classification"
    p = write(f"name: v\ntask: {task}\ndataset: {dataset}\nmodel: {model}\nmethod: {method}\n")
    code, text = cli("validate", p)
    assert code == 2 and message in " ".join(text.split()), text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


EXP = """\
name: sa
dataset: {name: digits, fraction: 0.1}
model: {name: cnn, width: 4}
method: {name: samix}
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
eval: {extra: [automix_heads]}
seeds: [0]
"""


def test_samix_runs_and_resumes_exactly(cli, write, tmp_path, monkeypatch):
    """Interrupt a run after epoch 1 and resume it: the final weights, the MixBlock (with its BatchNorm
    statistics), its optimizer state, the heads and the momentum encoder equal the uninterrupted run's."""
    import pandas as pd
    p = write(EXP)
    a, b = full_and_resumed(cli, p, tmp_path, monkeypatch)
    ep = pd.read_parquet(tmp_path / "full" / "epochs")
    assert len(ep) == 2 and 0 <= ep.iloc[-1]["test_automix_mix_k_accuracy"] <= 1
    for part in ("k", "block", "head_mix_q", "head_mix_k"):
        for key in a["method"][part]:
            torch.testing.assert_close(a["method"][part][key], b["method"][part][key], rtol=0, atol=0)
    for sa, sb in zip(a["method"]["opts"], b["method"]["opts"]):
        torch.testing.assert_close(sa["state"][0]["momentum_buffer"], sb["state"][0]["momentum_buffer"],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("opts", [{"mask_adjust": 1.0}])
def test_the_steady_state_step_never_syncs(opts, tmp_path):
    from mixcli.api import DataBundle, Split
    from mixcli.training.hostsync import engine_steps

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(128) % 10
    data = DataBundle("classification", Split(x, y), Split(x[:16].clone(), y[:16].clone()), num_classes=10,
                      mean=(0.3,), std=(0.3,), augment=True, pad=1, flip=True)
    c = engine_steps("samix", opts, data, torch.device("cpu"), batch_size=32, warmup=2, steps=3,
                     artifacts_dir=tmp_path)
    assert c.syncs == 0, c.where()


def test_encoder_pass_full_runs_all_of_the_encoder_like_the_reference():
    """``encoder_pass: full`` (the reference's ``backbone_k(img)``) gives the same features and, in train
    mode, moves the later stages' BatchNorm statistics of f_k; ``to_mask`` leaves them alone."""
    m, model, ctx, opt, x, y = _setup()
    m.k.train()
    last = [mod for mod in m.k.stages[-1].modules() if isinstance(mod, nn.BatchNorm2d)][0]
    before = last.running_mean.clone()
    h_part = m.features(x, full=False)
    assert torch.equal(last.running_mean, before)
    h_full = m.features(x, full=True)
    torch.testing.assert_close(h_full, h_part)
    assert not torch.equal(last.running_mean, before)
    with pytest.raises(PluginError, match="encoder_pass must be one of full, to_mask"):
        SAMix(encoder_pass="half")


def test_a_bf16_model_gets_a_bf16_generator_and_trains():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4).to(torch.bfloat16)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.extra["optimizer"] = opt
    m = SAMix()
    m.setup(ctx)
    m.start_epoch(1, ctx)
    assert all(p.dtype == torch.bfloat16 for p in m.block.parameters()) and m.head_mix_q.weight.dtype == torch.bfloat16
    for step in range(2):
        ctx.step = step
        out = m(model, Batch(x8.to(torch.bfloat16) / 255, y, torch.arange(16)), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
