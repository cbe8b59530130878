"""Input-mixing methods: mixup (batch / pair / elem, with the CutMix switch), cutmix, fmix, resizemix and
saliencymix. Targets, lambda laws over many draws, the unmixed limit, mixed pixels recomputed independently,
agreement with torchvision's MixUp / CutMix, the saliency map against scipy, and one real epoch on digits."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy import ndimage, stats
from torchvision.transforms import v2
from typer.testing import CliRunner

from mixcli.api import Batch, Context, PluginError, Split, soft_targets
from mixcli.cli import app
from mixcli_plugins.methods import fmix as fm
from mixcli.mixing.boxes import box_lam
from mixcli_plugins.methods.cutmix import CutMix
from mixcli_plugins.methods.fmix import FMix
from mixcli_plugins.methods.mixup import Mixup
from mixcli_plugins.methods.resizemix import ResizeMix
from mixcli_plugins.methods.saliencymix import SaliencyMix, saliency_peak, spectral_residual

P_MIN = 1e-3  # every test below uses fixed seeds, so it is deterministic; this threshold only catches a wrong law

METHODS = {
    "mixup-batch": lambda: Mixup(alpha=0.4),
    "mixup-pair": lambda: Mixup(alpha=0.4, mode="pair"),
    "mixup-elem": lambda: Mixup(alpha=0.4, mode="elem", label_smoothing=0.1),
    "switch-batch": lambda: Mixup(alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1),
    "switch-pair": lambda: Mixup(alpha=0.4, cutmix_alpha=1.0, mode="pair", prob=0.8),
    "switch-elem": lambda: Mixup(alpha=0.4, cutmix_alpha=1.0, mode="elem", cutmix_minmax=[0.2, 0.6]),
    "cutmix": lambda: CutMix(alpha=1.0),
    "cutmix-minmax": lambda: CutMix(minmax=[0.3, 0.7], label_smoothing=0.1),
    "fmix": lambda: FMix(),
    "fmix-soft": lambda: FMix(max_soft=0.1),
    "resizemix": lambda: ResizeMix(),
    "saliencymix": lambda: SaliencyMix(),
}


class Capture:
    """A stand-in model: keeps the (mixed) input it is given and returns zero logits."""

    def __init__(self, k: int):
        self.k, self.x = k, None

    def __call__(self, x):
        self.x = x
        return torch.zeros(x.shape[0], self.k)


def make_ctx(x, y, k, rng=None, seed=0) -> Context:
    return Context(task="classification", num_classes=k, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed) if rng is None else rng, train=Split(x, y),
                   fetch=lambda i: (x[i], y[i]), epochs=1)


def run(method, x, y, k, rng=None, seed=0):
    """One training forward of ``method``: (the mixed input the model saw, the MixOutput)."""
    ctx = make_ctx(x, y, k, rng=rng, seed=seed)
    method.setup(ctx)
    model = Capture(k)
    out = method(model, Batch(x, y, torch.arange(len(y))), ctx)
    return model.x, out


def rand_images(n=16, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def chi2_p(counts, probs) -> float:
    """Chi-square goodness of fit, pooling neighbouring bins until each expects >= 5."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    exp = probs / probs.sum() * counts.sum()
    obs_p, exp_p, o, e = [], [], 0.0, 0.0
    for oi, ei in zip(counts, exp):
        o, e = o + oi, e + ei
        if e >= 5:
            obs_p.append(o), exp_p.append(e)
            o = e = 0.0
    obs_p[-1] += o
    exp_p[-1] += e
    return float(stats.chisquare(obs_p, exp_p).pvalue)


def is_rectangle(mask: torch.Tensor) -> bool:
    rows, cols = mask.any(1), mask.any(0)
    return bool(torch.equal(mask, rows[:, None] & cols[None, :]))


# ------------------------------------------------------------------------------ invariants of every method
@pytest.mark.parametrize("name", list(METHODS))
def test_targets_weights_and_shapes(name):
    """Rows are constant images of distinct values and labels are 0..B-1, so y_b reveals the partner and the
    per-pixel weight of the row's own image, w = (x~ - x_j) / (x_i - x_j), is exact. For every method: valid
    soft targets, w in [0, 1], mean(w) = lam (the label weight equals the share of the row's own image),
    shapes and dtypes kept; then the shape of w that defines each method."""
    n, k = 16, 16
    x = torch.linspace(0.1, 0.9, n).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    y = torch.arange(n)
    for seed in range(8):
        mixed, out = run(METHODS[name](), x, y, k, seed=seed)
        assert mixed.shape == x.shape and mixed.dtype == x.dtype
        assert out.lam.shape == (n,) and out.lam.dtype == torch.float32 and out.y_b.dtype == torch.int64
        assert torch.equal(out.y_a, y) and out.logits.shape == (n, k)
        t = soft_targets(out, k)
        assert (t >= 0).all() and ((out.lam >= 0) & (out.lam <= 1)).all()
        torch.testing.assert_close(t.sum(1), torch.ones(n))
        moved = torch.nonzero(out.y_b != y).flatten()
        assert len(moved) > 0
        w = ((mixed - x[out.y_b]) / (x - x[out.y_b]))[moved]
        assert (w > -1e-5).all() and (w < 1 + 1e-5).all()
        assert (w - w[:, :1]).abs().max() < 1e-5                      # all channels share the weight
        w = w[:, 0]
        torch.testing.assert_close(w.mean((1, 2)), out.lam[moved], atol=2e-5, rtol=0)
        hard = (w - w.round()).abs().max(-1).values.max(-1).values < 1e-5   # per row: binary weights?
        const = (w - w[:, :1, :1]).abs().flatten(1).max(1).values < 1e-5
        if name.startswith("mixup"):
            assert const.all()
        elif name.startswith("switch"):
            assert (const | hard).all()
            for r in torch.nonzero(hard & ~const).flatten():
                assert is_rectangle(w[r] < 0.5)
        elif name == "fmix-soft":
            assert (w - w[:1]).abs().max() < 1e-5                         # one mask for the batch
        else:
            assert hard.all() and (w.round() - w[:1].round()).abs().max() == 0   # one binary mask / box
            if name != "fmix":
                assert is_rectangle(w[0] < 0.5)


@pytest.mark.parametrize("name", ["mixup-batch", "mixup-elem", "switch-elem", "cutmix", "fmix", "saliencymix"])
def test_random_images_mix_pixelwise(name):
    """On random images every mixed pixel is the convex combination of the same pixel of the row and of
    its partner (nothing moves), with binary weights for the cutting methods."""
    n = 12
    x, y = rand_images(n, seed=3), torch.arange(n)
    mixed, out = run(METHODS[name](), x, y, n, seed=5)
    xp, lam = x[out.y_b], out.lam.view(-1, 1, 1, 1)
    if name.startswith("mixup"):
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * xp)
    else:
        assert ((mixed == x) | (mixed == xp)).all() or name == "switch-elem"
        own = (mixed == x).float().mean((1, 2, 3))
        mixup_rows = ~((mixed == x) | (mixed == xp)).all((1, 2, 3))
        torch.testing.assert_close(mixed[mixup_rows], (lam * x + (1 - lam) * xp)[mixup_rows])
        cut = ~mixup_rows & (out.y_b != y)
        torch.testing.assert_close(own[cut], out.lam[cut], atol=1e-6, rtol=0)


def test_resizemix_pastes_the_whole_partner_resized():
    """Outside the patch the image is untouched; inside it is the whole partner image shrunk to the patch by
    nearest-neighbour sampling (source index floor(i * H / h)); lam = 1 - patch area / (H W)."""
    n, h, w = 8, 32, 24
    x, y = rand_images(n, h=h, w=w, seed=1), torch.arange(n)
    for seed in range(5):
        mixed, out = run(ResizeMix(), x, y, n, seed=seed)
        changed = (mixed != x).any(1).any(0)
        rows, cols = torch.nonzero(changed.any(1)).flatten(), torch.nonzero(changed.any(0)).flatten()
        y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        ph, pw = y2 - y1, x2 - x1
        assert abs(ph / h - pw / w) <= 1 / min(ph, pw)      # one scale tau for both sides
        src_r = (torch.arange(ph) * (h / ph)).floor().long()
        src_c = (torch.arange(pw) * (w / pw)).floor().long()
        patch = x[out.y_b][:, :, src_r][:, :, :, src_c]
        assert torch.equal(mixed[..., y1:y2, x1:x2], patch)
        assert torch.equal(mixed[..., :y1, :], x[..., :y1, :]) and torch.equal(mixed[..., y2:, :], x[..., y2:, :])
        torch.testing.assert_close(out.lam, torch.full((n,), 1 - ph * pw / (h * w)))


# ------------------------------------------------------------------------------------- the unmixed limit
class ForcedBeta:
    """A numpy generator whose Beta draws return ``lam`` (everything else is the real generator's)."""

    def __init__(self, lam: float, seed: int = 0):
        self.lam, self.rng = lam, np.random.default_rng(seed)

    def beta(self, a, b, size=None):
        return self.lam if size is None else np.full(size, self.lam)

    def __getattr__(self, name):
        return getattr(self.rng, name)


@pytest.mark.parametrize("method,forced", [
    (Mixup(prob=0.0), None), (Mixup(alpha=0.0), None), (Mixup(prob=0.0, mode="elem"), None),
    (Mixup(prob=0.0, mode="pair", cutmix_alpha=1.0), None), (Mixup(alpha=0.0, cutmix_alpha=1.0, prob=0.0), None),
    (CutMix(prob=0.0), None), (ResizeMix(prob=0.0), None), (SaliencyMix(prob=0.0), None),
    (Mixup(mode="elem", cutmix_alpha=1.0), 1.0), (CutMix(), 1.0), (FMix(), 1.0), (FMix(max_soft=0.2), 1.0),
    (SaliencyMix(), 1.0),
])
def test_lambda_one_returns_the_unmixed_batch(method, forced):
    n, k = 10, 4
    x, y = rand_images(n, seed=2), torch.arange(n) % k
    rng = ForcedBeta(forced) if forced is not None else None
    mixed, out = run(method, x, y, k, rng=rng)
    assert torch.equal(mixed, x)
    assert torch.equal(out.lam, torch.ones(n))
    torch.testing.assert_close(soft_targets(out, k), F.one_hot(y, k).float())


# --------------------------------------------------------------------------------------- lambda laws
def draws(method, calls, n, h=32, w=32, seed=0):
    """``calls`` host-side draws of Mixup.draw: (perm, lam, cut, box) per call."""
    ctx = make_ctx(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long), 2, seed=seed)
    return [method.draw(ctx, n, h, w) for _ in range(calls)]


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_mixup_batch_and_elem_lambda_are_beta(alpha):
    batch = np.array([d[1] for d in draws(Mixup(alpha=alpha), 3000, 8)])
    assert (batch == batch[:, :1]).all()                                   # one lambda per batch
    assert stats.kstest(batch[:, 0], stats.beta(alpha, alpha).cdf).pvalue > P_MIN
    elem = np.concatenate([d[1] for d in draws(Mixup(alpha=alpha, mode="elem"), 100, 32)])
    assert stats.kstest(elem, stats.beta(alpha, alpha).cdf).pvalue > P_MIN


def test_mixup_pair_mode_pairs_share_lambda_and_box():
    lams = []
    for perm, lam, cut, box in draws(Mixup(alpha=0.5, cutmix_alpha=1.0, mode="pair"), 300, 9):
        assert np.array_equal(perm[perm], np.arange(9))                    # disjoint pairs (an involution)
        assert (perm == np.arange(9)).sum() == 1                           # the odd row out is not mixed ...
        solo = int(np.nonzero(perm == np.arange(9))[0][0])
        assert lam[solo] == 1 and not cut[solo]                            # ... and keeps lam = 1
        assert np.array_equal(lam, lam[perm]) and np.array_equal(cut, cut[perm])
        assert all(np.array_equal(b, b[perm]) for b in box)
        lams.append(lam[(perm > np.arange(9)) & ~cut])
    assert stats.kstest(np.concatenate(lams), stats.beta(0.5, 0.5).cdf).pvalue > P_MIN


def test_mixup_prob_and_switch_prob():
    """prob: each element mixed with probability prob; switch_prob: CutMix chosen with that probability,
    with lambda from Beta(cutmix_alpha) (uncorrected) for CutMix rows and Beta(alpha) for mixup rows."""
    m = Mixup(alpha=0.3, cutmix_alpha=2.0, switch_prob=0.25, prob=0.6, mode="elem", correct_lam=False)
    d = draws(m, 200, 32)
    lam, cut = np.concatenate([x[1] for x in d]), np.concatenate([x[2] for x in d])
    mixed = lam != 1
    assert stats.binomtest(int(mixed.sum()), len(lam), 0.6).pvalue > P_MIN
    per_batch = mixed.reshape(200, 32).mean(1)
    assert ((per_batch > 0) & (per_batch < 1)).all()                  # decided per element, not per batch
    assert stats.binomtest(int(cut.sum()), int(mixed.sum()), 0.25).pvalue > P_MIN
    assert stats.kstest(lam[cut], stats.beta(2.0, 2.0).cdf).pvalue > P_MIN
    assert stats.kstest(lam[mixed & ~cut], stats.beta(0.3, 0.3).cdf).pvalue > P_MIN
    # corrected: CutMix rows carry their box's area
    for perm, lam, cut, box in draws(Mixup(alpha=0.3, cutmix_alpha=2.0, mode="elem"), 20, 16, h=12, w=20):
        np.testing.assert_allclose(lam[cut], box_lam([b[cut] for b in box], 12, 20))
        assert all((b[~cut] == 0).all() for b in box)


def test_cutmix_lambda_is_beta_and_corrected_to_the_box_area():
    h, w = 24, 32
    ctx_raw = make_ctx(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long), 2, seed=7)
    ctx_cor = make_ctx(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long), 2, seed=7)
    raw_m, cor_m = CutMix(alpha=0.7, correct_lam=False), CutMix(alpha=0.7)
    raw, cor, inner = [], [], 0
    for _ in range(3000):
        lam_r, box_r = raw_m.draw(ctx_raw, h, w)
        lam_c, box_c = cor_m.draw(ctx_cor, h, w)
        assert box_r == box_c                                  # same stream: correcting draws nothing more
        y1, y2, x1, x2 = box_c
        assert lam_c == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (h * w))
        rh, rw = int(0.5 * math.sqrt(1 - lam_r) * h), int(0.5 * math.sqrt(1 - lam_r) * w)
        assert y2 - y1 <= 2 * rh and x2 - x1 <= 2 * rw
        if 0 < y1 and y2 < h and 0 < x1 and x2 < w:            # not clipped: exactly the paper's sides
            assert (y2 - y1, x2 - x1) == (2 * rh, 2 * rw)
            inner += 1
        raw.append(lam_r)
        cor.append(lam_c)
    assert inner > 300
    assert stats.kstest(raw, stats.beta(0.7, 0.7).cdf).pvalue > P_MIN
    assert np.mean(cor) > np.mean(raw)                         # clipping only ever shrinks the box


def test_cutmix_minmax_sides_uniform_and_lambda_is_area():
    h = w = 40
    ctx = make_ctx(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long), 2, seed=1)
    m = CutMix(minmax=[0.25, 0.5], correct_lam=False)
    sides = []
    for _ in range(2000):
        lam, (y1, y2, x1, x2) = m.draw(ctx, h, w)
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert lam == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (h * w))
        sides += [y2 - y1, x2 - x1]
    counts = np.bincount(sides, minlength=21)[10:21]
    assert counts.sum() == len(sides) and chi2_p(counts, np.ones(11)) > P_MIN


def test_fmix_lambda_law_and_mask_mean():
    h = w = 32
    m = FMix(alpha=0.5)
    ctx = make_ctx(torch.zeros(1, 1, h, w), torch.zeros(1, dtype=torch.long), 2, seed=4)
    lams = []
    for _ in range(1500):
        mask, lam = m.mask(ctx, h, w, "cpu")
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum().item() == round(lam * h * w)         # lam = mask mean, a whole number of pixels
        lams.append(lam)
    assert stats.kstest(lams, stats.beta(0.5, 0.5).cdf).pvalue > P_MIN


def test_fmix_matches_the_reference_construction():
    """The low-frequency image and its binarisation against a numpy transcription of the reference code
    (ecs-vlc/FMix: fftfreqnd, get_spectrum, make_low_freq_image, binarise_mask)."""
    h, w, decay = 12, 15, 3.0
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay
    noise = np.random.default_rng(0).standard_normal((h, w // 2 + 2, 2)).astype(np.float32)
    ref = np.real(np.fft.irfftn(scale * (noise[..., 0] + 1j * noise[..., 1]), (h, w), axes=(0, 1)))
    ours = fm.low_freq_image(torch.from_numpy(noise[:, : w // 2 + 1]).contiguous(),
                             fm.spectrum_scale(h, w, decay, "cpu"), h, w)
    np.testing.assert_allclose(ours.numpy(), ref.reshape(-1), rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    for lam, max_soft in ((0.3, 0.0), (0.3, 0.1), (0.9, 0.2), (0.5, 0.5)):
        num = math.ceil(lam * h * w)
        flat = ref.reshape(-1).copy()
        idx = flat.argsort()[::-1]
        soft = int(flat.size * (min(lam, 1 - lam) if max_soft > lam or max_soft > 1 - lam else max_soft))
        flat[idx[: num + soft]] = 1
        flat[idx[num - soft:]] = 0
        flat[idx[num - soft: num + soft]] = np.linspace(1, 0, 2 * soft)
        got = fm.binarise(torch.from_numpy(ref.reshape(-1).astype(np.float32)), num, max_soft, lam)
        np.testing.assert_allclose(got.numpy(), flat, atol=1e-6)
        assert got.sum().item() == pytest.approx(num, abs=1e-3)


def test_fmix_decay_power_makes_masks_smooth():
    """decay_power 3 gives a few large blobs: far fewer label changes between neighbouring pixels than
    white noise (decay_power 0)."""
    ctx = make_ctx(torch.zeros(1, 1, 32, 32), torch.zeros(1, dtype=torch.long), 2, seed=0)

    def edges(decay):
        m = FMix(decay_power=decay)
        return np.mean([(mk[..., 1:] != mk[..., :-1]).float().mean().item()
                        for mk, _ in (m.mask(ctx, 32, 32, "cpu") for _ in range(50))])
    assert edges(3.0) < 0.25 * edges(0.0)


def test_resizemix_scale_is_uniform_on_the_scope():
    h = w = 32
    ctx = make_ctx(torch.zeros(1, 3, h, w), torch.zeros(1, dtype=torch.long), 2, seed=2)
    m = ResizeMix()
    sides = []
    for _ in range(3000):
        lam, (y1, y2, x1, x2) = m.draw(ctx, h, w)
        assert 0 <= y1 and y2 <= h and 0 <= x1 and x2 <= w and y2 - y1 == x2 - x1
        assert lam == pytest.approx(1 - (y2 - y1) ** 2 / (h * w))
        sides.append(y2 - y1)
    k = np.arange(3, 26)                                        # side = int(32 tau), tau ~ U(0.1, 0.8)
    probs = np.minimum(k + 1, 25.6) - np.maximum(k, 3.2)
    counts = np.bincount(sides, minlength=26)[3:26]
    assert counts.sum() == len(sides) and chi2_p(counts, probs) > P_MIN


# --------------------------------------------------------------------------------------------- saliency
@pytest.mark.parametrize("size", [64, 32])
def test_spectral_residual_against_scipy(size):
    """At <= 64 pixels no resizing happens: grey -> log|F| minus its 3x3 mean (replicate) -> inverse FFT with
    the original phase -> squared magnitude -> Gaussian (sigma 2.5 * W / 64, zero padding, radius 2 sigma)."""
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    grey = np.einsum("bchw,c->bhw", x.double().numpy(), [0.2989, 0.5870, 0.1140])
    sigma = 2.5 * size / 64
    ref = []
    for g in grey:
        f = np.fft.fft2(g)
        r = np.log(np.abs(f)) - ndimage.uniform_filter(np.log(np.abs(f)), 3, mode="nearest")
        s = np.abs(np.fft.ifft2(np.exp(r + 1j * np.angle(f)))) ** 2
        ref.append(ndimage.gaussian_filter(s, sigma, mode="constant", truncate=math.ceil(2 * sigma) / sigma))
    ref = np.stack(ref)
    got = spectral_residual(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4 * ref.max(), rtol=1e-3)


def spot_images(n, h, spots, noise=0.05, seed=0):
    x = noise * torch.randn(n, 3, h, h, generator=torch.Generator().manual_seed(seed))
    for i, (r, c) in enumerate(spots):
        x[i, :, r, c] += 3.0
    return x


@pytest.mark.parametrize("h", [8, 32, 128])
def test_saliency_peak_finds_a_small_object_in_each_image(h):
    g = torch.Generator().manual_seed(h)
    spots = torch.randint(h, (16, 2), generator=g).tolist()
    r, c = saliency_peak(spot_images(16, h, spots), "spectral_residual")
    err = torch.maximum((r - torch.tensor(spots)[:, 0]).abs(), (c - torch.tensor(spots)[:, 1]).abs())
    assert err.max() <= (0 if h <= 64 else 2)           # images wider than 64 px are shrunk to 64 first


def test_saliencymix_box_is_centred_on_the_partners_salient_spot():
    """Each image has a bright spot somewhere else; the pasted box is the same for every row, lies where
    the first row's partner has its spot, and has the CutMix size around it."""
    n, h = 8, 32
    spots = [(4 + 3 * i, 27 - 3 * i) for i in range(n)]
    x, y = spot_images(n, h, spots), torch.arange(n)
    for seed in range(10):
        mixed, out = run(SaliencyMix(saliency="spectral_residual"), x, y, n, seed=seed)
        box = (mixed != x).any(1)
        box = box[(out.y_b != y)].any(0)
        if not box.any():
            continue
        rows, cols = torch.nonzero(box.any(1)).flatten(), torch.nonzero(box.any(0)).flatten()
        sr, sc = spots[int(out.y_b[0])]
        assert rows[0] <= sr <= rows[-1] and cols[0] <= sc <= cols[-1]
        # unclipped sides are symmetric around the spot: centre within half a pixel
        if 0 < rows[0] and rows[-1] < h - 1:
            assert abs((rows[0] + rows[-1] + 1) / 2 - sr) <= 0.5
        if 0 < cols[0] and cols[-1] < h - 1:
            assert abs((cols[0] + cols[-1] + 1) / 2 - sc) <= 0.5


def test_saliencymix_box_size_follows_beta():
    """All images have their spot at the centre (16, 16), so no box is clipped: its half-side is
    int(16 sqrt(1 - lam)) with lam ~ Beta(alpha, alpha), and the label weight is exactly the box's area."""
    n, h, alpha = 4, 32, 0.6
    x = spot_images(n, h, [(16, 16)] * n)
    y = torch.arange(n)
    ctx = make_ctx(x, y, n, seed=11)
    m, model = SaliencyMix(alpha=alpha, saliency="spectral_residual"), Capture(n)
    half = []
    for _ in range(1500):
        out = m(model, Batch(x, y, y), ctx)
        side = math.sqrt((1 - float(out.lam[0])) * h * h)
        assert abs(side - round(side)) < 1e-3 and round(side) % 2 == 0
        half.append(round(side) // 2)
    edges = 1 - (np.arange(17) / 16) ** 2                     # half-side m  <=>  lam in (edges[m+1], edges[m]]
    probs = stats.beta(alpha, alpha).cdf(edges[:-1]) - stats.beta(alpha, alpha).cdf(edges[1:])
    assert chi2_p(np.bincount(half, minlength=16)[:16], probs) > P_MIN


# ------------------------------------------------------------------------------- agreement with torchvision
class Stub:
    """A stand-in for the numpy generator that returns the draws torchvision made: lam, the box centre
    (told apart by the bound: H for rows, W for columns) and torchvision's pairing, batch.roll(1, 0)."""

    def __init__(self, lam, cy, cx, h, w):
        self.lam, self.cy, self.cx, self.h, self.w = lam, cy, cx, h, w

    def beta(self, a, b, size=None):
        return self.lam if size is None else np.full(size, self.lam)

    def random(self, size=None):
        return 0.0 if size is None else np.zeros(size)

    def integers(self, low, high=None, size=None):
        v = {self.h: self.cy, self.w: self.cx}[high]
        return v if size is None else np.full(size, v)

    def permutation(self, n):
        return (np.arange(n) - 1) % n


class FixedDist:
    def __init__(self, lam):
        self.lam = lam

    def sample(self, shape=()):
        return torch.tensor(self.lam, dtype=torch.float64)


CASES = [(0.3, 5, 7), (0.5, 0, 0), (0.8, 11, 15), (0.05, 6, 2), (0.62, 1, 14)]   # (lam, cy, cx); H 12, W 16


@pytest.mark.parametrize("lam,cy,cx", CASES)
@pytest.mark.parametrize("ours", ["cutmix", "switch-batch", "switch-elem", "switch-pair"])
def test_cutmix_agrees_with_torchvision(monkeypatch, lam, cy, cx, ours):
    n, k, h, w = 2 if ours == "switch-pair" else 6, 5, 12, 16
    x, y = rand_images(n, h=h, w=w, seed=9), torch.tensor([0, 3, 1, 4, 4, 2][:n])
    tv = v2.CutMix(alpha=1.0, num_classes=k)
    monkeypatch.setattr(tv, "_dist", FixedDist(lam))
    real_randint = torch.randint
    monkeypatch.setattr(torch, "randint", lambda high, size, **kw: torch.tensor([{w: cx, h: cy}[high]]))
    tv_x, tv_y = tv(x.clone(), y)
    monkeypatch.setattr(torch, "randint", real_randint)
    method = CutMix() if ours == "cutmix" else Mixup(alpha=0.0, cutmix_alpha=1.0, mode=ours.split("-")[1])
    mixed, out = run(method, x, y, k, rng=Stub(lam, cy, cx, h, w))
    assert torch.equal(mixed, tv_x)
    torch.testing.assert_close(soft_targets(out, k), tv_y)
    assert not torch.equal(mixed, x) or lam > 0.99


@pytest.mark.parametrize("lam", [0.1, 0.37, 0.5, 0.93])
@pytest.mark.parametrize("mode", ["batch", "elem", "pair"])
def test_mixup_agrees_with_torchvision(monkeypatch, lam, mode):
    n, k = (2 if mode == "pair" else 6), 5
    x, y = rand_images(n, h=10, w=10, seed=4), torch.tensor([2, 0, 4, 1, 1, 3][:n])
    tv = v2.MixUp(alpha=1.0, num_classes=k)
    monkeypatch.setattr(tv, "_dist", FixedDist(lam))
    tv_x, tv_y = tv(x.clone(), y)
    mixed, out = run(Mixup(mode=mode), x, y, k, rng=Stub(lam, 0, 0, 10, 10))
    torch.testing.assert_close(mixed, tv_x)
    torch.testing.assert_close(soft_targets(out, k), tv_y)


# ------------------------------------------------------------------------------------- options and runs
@pytest.mark.parametrize("make,words", [
    (lambda: Mixup(mode="half"), "mode"), (lambda: Mixup(switch_prob=1.5), "switch_prob"),
    (lambda: Mixup(cutmix_minmax=[0.2, 0.5]), "cutmix_alpha"), (lambda: Mixup(cutmix_alpha=-1), "cutmix_alpha"),
    (lambda: CutMix(minmax=[0.6, 0.2]), "minmax"), (lambda: FMix(max_soft=0.7), "max_soft"),
    (lambda: FMix(alpha=0), "alpha"), (lambda: ResizeMix(scope=[0.9, 0.1]), "scope"),
    (lambda: ResizeMix(interpolation="lanczos"), "interpolation"), (lambda: SaliencyMix(prob=2), "prob"),
])
def test_bad_options_name_the_option(make, words):
    with pytest.raises(PluginError, match=words):
        make()


@pytest.mark.parametrize("method", [CutMix(), FMix(), ResizeMix(), SaliencyMix(), Mixup(cutmix_alpha=1.0)])
def test_cutting_methods_need_images(method):
    ctx = make_ctx(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(PluginError, match="image inputs"):
        method.setup(ctx)


def test_one_epoch_on_digits_through_the_cli(tmp_path):
    grid = [{"name": "mixup", "alpha": 0.4, "mode": m} for m in ("batch", "pair", "elem")] + [
        {"name": "mixup", "alpha": 0.8, "cutmix_alpha": 1.0, "mode": m, "label_smoothing": 0.1}
        for m in ("batch", "pair", "elem")] + [
        {"name": "cutmix"}, {"name": "fmix"}, {"name": "resizemix"}, {"name": "saliencymix"}]
    exp = {"name": "inputs", "task": "classification", "dataset": {"name": "digits"},
           "model": {"name": "cnn", "width": 8}, "method": "erm",
           "train": {"epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
           "seeds": [0], "grid": {"method": grid}, "out": str(tmp_path / "out")}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "e.yaml"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    epochs = pd.read_parquet(tmp_path / "out" / "epochs")
    assert len(runs) == len(grid) and (runs["status"] == "finished").all()
    assert sorted(runs["method"].unique()) == ["cutmix", "fmix", "mixup", "resizemix", "saliencymix"]
    assert len(epochs) == len(grid) and np.isfinite(epochs["train_loss"]).all()
    assert np.isfinite(runs["final_test_accuracy"]).all()
