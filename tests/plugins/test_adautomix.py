"""AdAutoMix: its generator and whole steps (two and more images, the adversarial alternation) against ports of
the official code (JinXins/Adversarial-AutoMixup ``heads/Ada_mix_pine.py`` ``AdaptiveMask`` and
``classifiers/AdAutoMix.py`` ``forward_train``) on random tensors with the same draws; bit-exact resume;
validate's refusals.

The ports follow the reference line by line (per-image q/k/v lists, the pairwise attention sums, its
[N, S, H, W] masks and loops); the implementation under test is batched and written differently."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, PluginError
from mixcli.mixing.learned import AdaptiveMask
from mixcli_plugins.methods.adautomix import AdAutoMix
from mixcli_plugins.models.cnn import CNN

from test_methods_dynamic import make_ctx
from resume_helpers import full_and_resumed


# ------------------------------------------------------------------------------------------ reference ports
def _conv1x1(conv, x):
    return torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x) + conv.bias.view(1, -1, 1, 1)


class OmAdaptiveMask:
    """The official ``AdaptiveMask`` (forward, normal_mix, co_mix, caculate_attention, co_caculate_attention)
    with the weights of a :class:`AdaptiveMask`."""

    def __init__(self, block, scale_factor, mode="bilinear"):
        self.b, self.inter, self.lam_concat = block, block.inter, block.lam_concat
        self.scale_factor, self.upsample_mode = scale_factor, mode

    def conv_q(self, x):
        return _conv1x1(self.b.conv_q, x)

    def conv_k(self, x):
        return _conv1x1(self.b.conv_k, x)

    def conv_v(self, x):
        return _conv1x1(self.b.conv_v, x)

    def caculate_attention(self, f_map, f_map_):
        b, c, w, h = f_map.size()
        q, k = self.conv_q(f_map).view(b, self.inter, -1).permute(0, 2, 1), self.conv_k(f_map).view(b, self.inter, -1)
        q_, k_ = self.conv_q(f_map_).view(b, self.inter, -1).permute(0, 2, 1), \
            self.conv_k(f_map_).view(b, self.inter, -1)
        attn = torch.matmul(q.type(torch.float32), k_.type(torch.float32)).type(torch.float32)
        attn_ = torch.matmul(q_.type(torch.float32), k.type(torch.float32)).type(torch.float32)
        attn /= self.inter ** 0.5
        attn_ /= self.inter ** 0.5
        return attn.softmax(dim=-1), attn_.softmax(dim=-1)

    def co_caculate_attention(self, feature_map):
        b, c, w, h = feature_map[0].size()
        q, k, attn = [], [], []
        for i in range(0, len(feature_map)):
            q.append(self.conv_q(feature_map[i]).view(b, self.inter, -1).permute(0, 2, 1))
            k.append(self.conv_k(feature_map[i]).view(b, self.inter, -1))
        for i in range(0, len(q)):
            b, c, p = k[0].size()
            co_attn = torch.zeros(b, p, p)
            for j in range(0, len(k)):
                if i != j:
                    co_attn += torch.matmul(q[i].type(torch.float32), k[j].type(torch.float32))
            co_attn /= self.inter ** 0.5
            attn.append(co_attn.softmax(dim=-1))
        return attn

    def normal_mix(self, f_map, f_map_, lam):
        b, c, w, h = f_map.size()
        if self.lam_concat:
            lam_block = torch.zeros([b, 1, h, w]).to(f_map)
            lam_block[:] = lam
            f_map = torch.cat([f_map, lam_block], dim=1)
            f_map_ = torch.cat([f_map_, 1 - lam_block], dim=1)
        v, v_ = f_map, f_map_
        v = self.conv_v(v).view(b, 1, -1).permute(0, 2, 1)
        v_ = self.conv_v(v_).view(b, 1, -1).permute(0, 2, 1)
        attn, attn_ = self.caculate_attention(f_map, f_map_)
        mask_lam = torch.matmul(attn.type(torch.float32), v.type(torch.float32)).view(b, 1, h, w)
        mask_lam_ = torch.matmul(attn_.type(torch.float32), v_.type(torch.float32)).view(b, 1, h, w)
        return torch.cat([mask_lam, mask_lam_], dim=1)

    def co_mix(self, feature_map, lam):
        b, c, w, h = feature_map[0].size()
        feature_map = list(feature_map)
        if self.lam_concat:
            for i in range(0, len(feature_map)):
                lam_block = torch.zeros([b, 1, h, w]).to(feature_map[i])
                lam_block[:] = lam[i]
                feature_map[i] = torch.cat([feature_map[i], lam_block], dim=1)
        v = []
        for i in range(0, len(feature_map)):
            v.append(feature_map[i])
            v[i] = self.conv_v(v[i]).view(b, 1, -1).permute(0, 2, 1)
        attn = self.co_caculate_attention(feature_map)
        mask_zero = torch.matmul(attn[0].type(torch.float32), v[0].type(torch.float32)).view(b, 1, h, w)
        mask_list = [mask_zero, ]
        for i in range(1, len(v)):
            mask_lam = torch.matmul(attn[i].type(torch.float32), v[i].type(torch.float32)).view(b, 1, h, w)
            mask_list.append(mask_lam)
            if i == 1:
                mask = torch.cat([mask_zero, mask_list[i]], dim=1)
            else:
                mask = torch.cat([mask, mask_list[i]], dim=1)
        return mask

    def __call__(self, f_maps, lam):
        if len(f_maps) == 2:
            mask = self.normal_mix(f_maps[0], f_maps[1], lam)
        else:
            mask = self.co_mix(f_maps, lam)
        mask = F.interpolate(mask, scale_factor=self.scale_factor, mode=self.upsample_mode)
        return mask.softmax(dim=1)


def om_adautomix_step(m, model, x, y, rng, it, alpha=1.0, mix_samples=3, lam_margin=0.03, mixup_radio=0.5,
                      beta_radio=0.3):
    """``AdAutoMix.forward_train`` (the official classifier) with the method's modules, drawing from ``rng``
    in the method's order; ``it`` is the reference's ``self.iter``. Returns the total loss."""
    n = x.shape[0]
    index_mb = torch.from_numpy(rng.permutation(n))
    index_bb = torch.from_numpy(rng.permutation(n))
    co_mix = mix_samples
    lam = rng.beta(alpha, alpha, co_mix)
    ce = F.cross_entropy
    pos = model.embed_position
    g_k = lambda z: m.head_mix_k(m.k.forward_to(z, pos))  # noqa: E731
    g_q = lambda z: m.head_mix_q(model.forward_to(z, pos))  # noqa: E731
    feature = m.k.forward_to(x, m.pos)
    mixer = OmAdaptiveMask(m.block, x.shape[-1] // feature.shape[-1])
    simi = torch.nn.CosineSimilarity(dim=-1)
    index = [index_mb, index_bb]
    if co_mix > 2:
        for i in range(2, co_mix):
            index.append(torch.from_numpy(rng.permutation(n)))
        index_mb = index
        index_bb = [torch.from_numpy(rng.permutation(n)) for _ in range(len(index_mb))]
        co_lam = [lam[i] / lam.sum() for i in range(co_mix)]
        mask_mb = mixer([feature[i, :] for i in index_mb], co_lam)
        mask_bb = mixer([feature[i, :] for i in index_bb], co_lam).clone().detach()
        if lam_margin >= co_lam[0] or lam_margin > 1 - co_lam[0]:
            for i in range(co_mix):
                mask_bb[:, i, :, :] = co_lam[i]
        img_mix_mb = torch.zeros_like(x)
        img_mix_bb = torch.zeros_like(x)
        for i in range(co_mix):
            img_mix_mb += x[index_mb[i], :] * mask_mb[:, i, :, :].unsqueeze(1)
            img_mix_bb += x[index_bb[i], :] * mask_bb[:, i, :, :].unsqueeze(1)
        # forward_k
        pred_mix_k = g_k(img_mix_mb)
        loss_mix_k = sum(ce(pred_mix_k, y[index_mb[i]]) * co_lam[i] for i in range(co_mix))
        pred = [g_k(x[index_mb[i], :]) for i in range(co_mix)]
        cos_simi_weight = 0.0
        for i in range(co_mix):
            cos_simi_weight += simi(pred_mix_k, pred[i]) * co_lam[i]
        cos_simi_weight = torch.mean(cos_simi_weight)
        # forward_q
        loss_one_q = ce(model(x), y)
        co_mixed_x = x[index_bb[0], ] * co_lam[0]
        for i in range(1, co_mix):
            co_mixed_x += x[index_bb[i], ] * co_lam[i]
        pred_co = g_q(co_mixed_x)
        loss_co_mix_q = sum(ce(pred_co, y[index_bb[i]]) * co_lam[i] for i in range(co_mix))
        loss_re_q = loss_one_q * (1 - mixup_radio) + loss_co_mix_q * mixup_radio
        pred_mix_q = g_q(img_mix_bb)
        loss_mix_q = sum(ce(pred_mix_q, y[index_bb[i]]) * co_lam[i] for i in range(co_mix))
    else:
        lam_mb, lam_bb = lam[0], lam[1]
        mask_mb = mixer([feature, feature[index[0], :]], lam_mb)
        mask_bb = mixer([feature, feature[index[1], :]], lam_bb).clone().detach()
        if lam_margin >= lam_bb or lam_margin >= 1 - lam_bb:
            mask_bb[:, 0, :, :] = lam_bb
            mask_bb[:, 1, :, :] = 1 - lam_bb
        img_mix_mb = x * mask_mb[:, 0, :, :].unsqueeze(1) + x[index[0], :] * mask_mb[:, 1, :, :].unsqueeze(1)
        img_mix_bb = x * mask_bb[:, 0, :, :].unsqueeze(1) + x[index[1], :] * mask_bb[:, 1, :, :].unsqueeze(1)
        pred_mix_k = g_k(img_mix_mb)
        loss_mix_k = ce(pred_mix_k, y) * lam_mb + ce(pred_mix_k, y[index[0]]) * (1 - lam_mb)
        pred_x, pred_x_ = g_k(x), g_k(x[index[0], :])
        cos_simi_weight = torch.mean(simi(pred_mix_k, pred_x) * lam_mb + simi(pred_mix_k, pred_x_) * (1 - lam_mb))
        loss_re_q = ce(model(x), y)
        pred_mix_q = g_q(img_mix_bb)
        loss_mix_q = ce(pred_mix_q, y) * lam_bb + ce(pred_mix_q, y[index[1]]) * (1 - lam_bb)
    if it % 2 == 0:
        loss_mix_k = (-1.0) * beta_radio * loss_mix_k + (1 - beta_radio) * cos_simi_weight
    return loss_mix_q + loss_re_q + loss_mix_k


def _randomise(block, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------------------ the generator
@pytest.mark.parametrize("s, lam_concat", [(2, False), (2, True), (3, False), (4, False), (3, True)])
def test_adaptive_mask_agrees_with_the_official_generator(s, lam_concat):
    torch.manual_seed(0)
    block = AdaptiveMask(8, reduction=2, lam_concat=lam_concat)
    _randomise(block)
    feats = [torch.randn(5, 8, 3, 3) for _ in range(s)]
    lam = np.random.default_rng(0).dirichlet(np.ones(s)).tolist()
    lam_arg = lam[0] if s == 2 else lam
    want = OmAdaptiveMask(block, 4)(feats, lam_arg)
    got = block(feats, lam if s > 2 else (lam[0], 1 - lam[0]), (12, 12), "bilinear")
    assert got.shape == (5, s, 12, 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.sum(1), torch.ones(5, 12, 12))


# ------------------------------------------------------------------------------------------ whole steps
def _setup(**opts):
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = AdAutoMix(**opts)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.extra["optimizer"] = opt
    m.setup(ctx)
    m.start_epoch(1, ctx)
    with torch.no_grad():  # a generator with some contrast, so that the masks are not flat
        for p in m.block.parameters():
            p.mul_(30)
    return m, model, ctx, opt, x8.float() / 255, y


@pytest.mark.parametrize("mix_samples, lam_margin", [(2, 0.03), (2, 0.45), (3, 0.03), (3, 0.4), (4, 0.03)])
def test_steps_agree_with_the_official_forward_train(mix_samples, lam_margin):
    m, model, ctx, opt, x, y = _setup(mix_samples=mix_samples, lam_margin=lam_margin)
    rng = np.random.default_rng(0)  # the ctx's seed: the port replays the method's draws
    for it in range(3):  # adversarial, ordinary, adversarial (ctx.step 0: no momentum update in between)
        out = m(model, Batch(x, y, torch.arange(16)), ctx)
        want = om_adautomix_step(m, model, x, y, rng, it, mix_samples=mix_samples, lam_margin=lam_margin)
        torch.testing.assert_close(out.loss, want.to(out.loss.dtype), atol=1e-5, rtol=1e-5)
    assert m.iter == 1  # the reference's counter after three steps


def test_adversarial_always_makes_every_step_adversarial():
    m, model, ctx, opt, x, y = _setup(mix_samples=3, adversarial="always")
    rng = np.random.default_rng(0)
    for _ in range(2):
        out = m(model, Batch(x, y, torch.arange(16)), ctx)
        want = om_adautomix_step(m, model, x, y, rng, 0, mix_samples=3)  # the reference's adversarial branch
        torch.testing.assert_close(out.loss, want.to(out.loss.dtype), atol=1e-5, rtol=1e-5)


def test_random_samples_draws_two_to_mix_samples_images():
    m, model, ctx, opt, x, y = _setup(mix_samples=4, random_samples=True)
    seen = set()
    for _ in range(12):
        s, lam_m, lam_q, p_m, p_q = m.draw(ctx, 16)
        assert len(lam_m) == len(p_m) == len(p_q) == s and sum(lam_q) == pytest.approx(1)
        seen.add(s)
    assert seen == {2, 3, 4}


def test_the_generator_alone_takes_the_adversarial_loss():
    """On an adversarial step the generator's gradient is that of -beta CE_k + (1 - beta) cos; the model's
    gradient does not depend on the generator's loss at all (its masks are detached)."""
    m, model, ctx, opt, x, y = _setup(mix_samples=3)
    before = [p.detach().clone() for p in m.block.parameters()]
    out = m(model, Batch(x, y, torch.arange(16)), ctx)
    opt.zero_grad()
    out.loss.backward()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.block.parameters()))  # stepped in backward
    assert all(p.grad is None for p in m.block.parameters())
    assert all(p.grad is None for p in m.k.parameters()) and all(p.grad is None for p in m.head_mix_k.parameters())
    assert model.classifier.weight.grad is not None and m.state_dict()["iter"] == 1


@pytest.mark.parametrize("opts, message", [
    ({"mix_samples": 1}, "mix_samples must be an integer >= 2"),
    ({"beta_ratio": 1.5}, "beta_ratio must be in [0, 1]"),
    ({"mixup_ratio": -0.1}, "mixup_ratio must be in [0, 1]"),
    ({"alpha": 0}, "alpha must be > 0"),
    ({"random_samples": 1}, "random_samples must be true or false"),
    ({"upsampling": "area"}, "upsampling must be one of nearest, bilinear, bicubic"),
    ({"lam_margin": 0.7}, "lam_margin must be in [0, 0.5]"),
    ({"adversarial": "never"}, "adversarial must be one of alternate, always"),
])
def test_bad_options(opts, message):
    with pytest.raises(PluginError, match=message.replace("[", r"\[")):
        AdAutoMix(**opts)


# ------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("model, method, message", [
    ("{name: cnn}", "{name: adautomix, mix_samples: 1}", "mix_samples must be an integer >= 2"),
    ("{name: mlp}", "adautomix", "adautomix needs a spatial feature map (C, H, W) at position 1"),
    ("{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2}", "adautomix",
     "adautomix needs a spatial feature map (C, H, W)"),
])
def test_validate_refuses_in_one_line(cli, write, model, method, message):
    if "timm" in model:
        pytest.importorskip("timm")
    p = write(f"name: v\ndataset: {{name: digits}}\nmodel: {model}\nmethod: {method}\n")
    code, text = cli("validate", p)
    assert code == 2 and message in " ".join(text.split()), text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_validate_refuses_non_images(cli, write):
    p = write("name: v\ntask: regression\ndataset: {name: diabetes}\nmodel: {name: mlp}\nmethod: adautomix\n")
    code, text = cli("validate", p)
    assert code == 2 and "supports task classification, not regression" in text


EXP = """\
name: ada
dataset: {name: digits, fraction: 0.1}
model: {name: cnn, width: 4}
method: {name: adautomix}
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
seeds: [0]
"""


def test_adautomix_runs_and_resumes_exactly(cli, write, tmp_path, monkeypatch):
    """Interrupt a run after epoch 1 and resume it: the final weights, the generator, its optimizer state,
    the heads, the EMA teacher and the adversarial counter equal the uninterrupted run's."""
    p = write(EXP)
    a, b = full_and_resumed(cli, p, tmp_path, monkeypatch)
    for part in ("k", "block", "head_mix_q", "head_mix_k"):
        for key in a["method"][part]:
            torch.testing.assert_close(a["method"][part][key], b["method"][part][key], rtol=0, atol=0)
    assert int(a["method"]["iter"]) == int(b["method"]["iter"])
    for sa, sb in zip(a["method"]["opts"], b["method"]["opts"]):
        torch.testing.assert_close(sa["state"][0]["momentum_buffer"], sb["state"][0]["momentum_buffer"],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("opts", [{}, {"mix_samples": 2}])
def test_the_steady_state_step_never_syncs(opts, tmp_path):
    from mixcli.api import DataBundle, Split
    from mixcli.training.hostsync import engine_steps

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(128) % 10
    data = DataBundle("classification", Split(x, y), Split(x[:16].clone(), y[:16].clone()), num_classes=10,
                      mean=(0.3,), std=(0.3,), augment=True, pad=1, flip=True)
    c = engine_steps("adautomix", opts, data, torch.device("cpu"), batch_size=32, warmup=2, steps=3,
                     artifacts_dir=tmp_path)
    assert c.syncs == 0, c.where()


def test_a_bf16_model_gets_a_bf16_generator_and_trains():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4).to(torch.bfloat16)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.extra["optimizer"] = opt
    m = AdAutoMix()
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
