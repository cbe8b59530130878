"""The batch-transform form (``MixTransform``): the invariants peer libraries test for their own mixup
(labels sum to 1, lambda in range and equal to the pixel share, shapes / dtypes / memory format kept, batch
size 1, odd sizes, bad inputs refused), and timm's ``Mixup`` and torchvision's ``v2.MixUp`` / ``v2.CutMix``
as oracles: given the same random choices (a scripted generator replays theirs), the same batch and labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mixcli.api import PluginError
from mixcli.mixing import INPUT_METHODS, MixTransform, create


class Scripted:
    """A stand-in for the method's numpy generator that returns given values (another library's draws)."""

    def __init__(self, permutation=None, beta=(), integers=(), random=()):
        self.perm, self.betas, self.ints, self.rands = permutation, list(beta), list(integers), list(random)

    def permutation(self, n):
        return np.array(self.perm, dtype=np.int64)  # a copy (a reversed view has negative strides)

    def beta(self, a, b, size=None):
        v = self.betas.pop(0)
        return v if size is None else np.full(size, v)

    def integers(self, lo, hi=None, size=None):
        v = self.ints.pop(0)
        return v if size is None else np.full(size, v)

    def random(self, size=None):
        v = self.rands.pop(0)
        return v if size is None else np.full(size, v)


def batch(n=8, c=3, h=16, w=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    if dtype == torch.uint8:
        x = (x * 255).round().to(torch.uint8)
    else:
        x = x.to(dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------------------------------------ oracles
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_equals_timm_mixup_given_its_draws(smoothing):
    from timm.data import Mixup
    x, y = batch(n=6)
    tm = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=smoothing, num_classes=10)
    np.random.seed(4)
    lam, _ = tm._params_per_batch()
    np.random.seed(4)
    tx, ty = tm(x.clone(), y.clone())
    ours = MixTransform("mixup", 10, alpha=0.8, label_smoothing=smoothing)
    ours.rng = Scripted(permutation=np.arange(6)[::-1], beta=[lam])  # timm pairs row i with row B-1-i
    ox, oy = ours(x, y)
    torch.testing.assert_close(ox, tx)
    torch.testing.assert_close(oy, ty)


def test_mixup_equals_torchvision_mixup_given_its_draws():
    from torchvision.transforms import v2
    x, y = batch(n=5)
    tv = v2.MixUp(alpha=1.0, num_classes=10)
    torch.manual_seed(7)
    lam = float(tv._dist.sample(()))
    torch.manual_seed(7)
    tx, ty = tv(x.clone(), y.clone())
    ours = MixTransform("mixup", 10, alpha=1.0)
    ours.rng = Scripted(permutation=np.roll(np.arange(5), 1), beta=[lam])  # torchvision pairs i with i - 1
    ox, oy = ours(x, y)
    torch.testing.assert_close(ox, tx)
    torch.testing.assert_close(oy, ty)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("h, w", [(16, 12), (7, 5), (32, 32), (1, 9)])
def test_cutmix_equals_torchvision_cutmix_given_its_draws(seed, h, w):
    from torchvision.transforms import v2
    x, y = batch(n=4, h=h, w=w, seed=seed)
    tv = v2.CutMix(alpha=1.0, num_classes=10)
    torch.manual_seed(seed)
    lam = float(tv._dist.sample(()))
    cx, cy = int(torch.randint(w, size=(1,))), int(torch.randint(h, size=(1,)))
    torch.manual_seed(seed)
    tx, ty = tv(x.clone(), y.clone())
    ours = MixTransform("cutmix", 10, alpha=1.0)
    ours.rng = Scripted(permutation=np.roll(np.arange(4), 1), beta=[lam], integers=[cy, cx])
    ox, oy = ours(x, y)
    torch.testing.assert_close(ox, tx, rtol=0, atol=0)
    torch.testing.assert_close(oy, ty)


# ------------------------------------------------------------------------------------------------ invariants
CLASSIFY = [m for m in INPUT_METHODS if m != "cmixup"]  # cmixup is for regression (tested below)
METHODS = [m for m in CLASSIFY if m != "erm"]


def distinct_rows(n, c, h, w, dtype=torch.float32):
    """Each row a constant image of its own value: every mixed pixel tells its source."""
    v = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
    x = v.view(n, 1, 1, 1).expand(n, c, h, w).contiguous()
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("h, w", [(16, 16), (9, 7), (32, 24)])
def test_lam_is_in_range_and_equals_the_partner_free_pixel_share(name, h, w):
    t = MixTransform(name, 10, seed=3)
    n = 8
    x, y = distinct_rows(n, 3, h, w), torch.arange(n) % 10
    for _ in range(10):
        xm, ys = t(x, y)
        out = t.last
        assert ((out.lam >= 0) & (out.lam <= 1)).all()
        xp = x[out.y_b]
        moved = out.y_b != torch.arange(n)
        share = ((xm - xp) / (x - xp).where(moved.view(-1, 1, 1, 1), torch.ones(()))).mean((1, 2, 3))
        torch.testing.assert_close(share[moved], out.lam[moved].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ys.sum(1), torch.ones(n))
        assert (ys >= 0).all()


@pytest.mark.parametrize("name", CLASSIFY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shape_dtype_and_memory_format_are_kept(name, dtype, channels_last):
    x, y = batch(n=6, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xm, ys = MixTransform(name, 10, seed=1)(x, y)
    assert xm.shape == x.shape and xm.dtype == dtype
    assert xm.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert ys.shape == (6, 10) and ys.dtype == torch.float32
    torch.testing.assert_close(ys.sum(1), torch.ones(6))


@pytest.mark.parametrize("name", METHODS)
def test_uint8_images_mix_like_their_float_pixels(name):
    x8, y = batch(n=6, dtype=torch.uint8)
    a, b = MixTransform(name, 10, seed=2), MixTransform(name, 10, seed=2)
    m8, y8 = a(x8, y)
    mf, yf = b(x8.float() / 255, y)
    assert (m8.float() - mf * 255).abs().max() <= 0.5 + 1e-3  # the float result, rounded
    torch.testing.assert_close(y8, yf)


@pytest.mark.parametrize("name", CLASSIFY)
@pytest.mark.parametrize("n, h, w", [(1, 8, 8), (2, 1, 1), (3, 1, 7), (5, 13, 3)])
def test_batch_size_one_and_odd_sizes(name, n, h, w):
    x, y = batch(n=n, h=h, w=w)
    xm, ys = MixTransform(name, 10, seed=0)(x, y)
    assert xm.shape == x.shape and torch.isfinite(xm).all()
    torch.testing.assert_close(ys.sum(1), torch.ones(n))
    if n == 1 and name != "resizemix":  # resizemix pastes a shrunk copy of the partner: itself
        torch.testing.assert_close(xm, x)  # the only partner is the row itself


@pytest.mark.parametrize("name", METHODS)
def test_soft_and_one_hot_labels_mix_as_class_ids(name):
    x, y = batch(n=8)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    soft = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), 1)
    a, b, c = (MixTransform(name, 10, seed=5, label_smoothing=0.1) for _ in range(3))
    xa, ya = a(x, y)
    xb, yb = b(x, onehot)
    xc, yc = c(x, soft)
    assert torch.equal(xa, xb) and torch.equal(xa, xc)
    torch.testing.assert_close(ya, yb)
    out = c.last
    lam = out.lam.view(-1, 1)
    smooth = soft * 0.9 + 0.01
    torch.testing.assert_close(yc, lam * smooth[out.y_a] + (1 - lam) * smooth[out.y_b])
    torch.testing.assert_close(yc.sum(1), torch.ones(8))


def test_same_seed_same_batches_and_state_dict_resumes():
    x, y = batch(n=8)
    a = MixTransform("mixup", 10, seed=9, cutmix_alpha=1.0, mode="elem")
    first = [a(x, y) for _ in range(3)]
    b = MixTransform("mixup", 10, seed=9, cutmix_alpha=1.0, mode="elem")
    b(x, y)
    state = b.state_dict()
    c = MixTransform("mixup", 10, seed=0, cutmix_alpha=1.0, mode="elem")
    c.load_state_dict(state)
    for (xa, ya), (xc, yc) in zip(first[1:], [c(x, y) for _ in range(2)]):
        assert torch.equal(xa, xc) and torch.equal(ya, yc)


def test_usable_as_a_collate_fn():
    x, y = batch(n=20, dtype=torch.uint8)
    t = MixTransform("cutmix", 10, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, collate_fn=t)
    shapes = [(bx.shape, bx.dtype, by.shape) for bx, by in loader]
    assert shapes == [((8, 3, 16, 12), torch.uint8, (8, 10))] * 2 + [((4, 3, 16, 12), torch.uint8, (4, 10))]
    xm, ym = t((x[:4], y[:4]))  # one (x, y) pair
    assert xm.shape == x[:4].shape and ym.shape == (4, 10)


def test_features_mix_with_mixup():
    x, y = torch.randn(6, 5), torch.arange(6) % 3
    xm, ym = MixTransform("mixup", 3, seed=0)(x, y)
    assert xm.shape == (6, 5) and ym.shape == (6, 3)


@pytest.mark.parametrize("make, message", [
    (lambda: MixTransform("snapmix", 10), "needs class_activation, class_labels"),
    (lambda: MixTransform("manifold_mixup", 10), "is a feature-level method"),
    (lambda: MixTransform("mixup", 10, partners="dataset"), "draws partners from the training set: give train="),
    (lambda: MixTransform("regmixup", 10), "is a loss-level method"),
    (lambda: MixTransform("cmixup", 10), "supports task regression, not classification"),
    (lambda: MixTransform("cmixup"), "give train=(x, y)"),
    (lambda: MixTransform("cmixup", position=1, train=(torch.rand(4, 2), torch.rand(4))), "needs stages"),
    (lambda: MixTransform("snapmix"), "needs class_activation"),
    (lambda: MixTransform("mixup", 0), "num_classes must be a positive integer"),
    (lambda: MixTransform("mixup", 10, mean=(0.5,)), "give both mean and std"),
    (lambda: MixTransform("mixup", 10, alpah=1.0), "did you mean 'alpha'"),
    (lambda: MixTransform(create("mixup"), 10, alpha=1.0), "are for a method name"),
])
def test_methods_and_options_it_cannot_run_are_refused(make, message):
    with pytest.raises(PluginError) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, x, y, message", [
    ("cutmix", torch.rand(4, 12), torch.arange(4), "needs image inputs"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.arange(3), "4 inputs but labels of shape (3,)"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.rand(4), "must be integer class ids"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.rand(4, 7), "soft labels have 7 columns"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 10]), "class ids must be in [0, 10)"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.zeros(4, 10, dtype=torch.long), "must be floating point"),
    ("mixup", torch.rand(2, 1, 1, 1, 1, 3), torch.arange(2), "got 6-D shape"),
    ("mixup", torch.rand(3, 8, 8), 1, "one label"),
    ("mixup", torch.rand(3, 8, 8), torch.tensor(1), "one label"),
    ("mixup", torch.rand(0, 3, 8, 8), torch.arange(0), "the batch is empty"),
])
def test_bad_batches_are_refused_in_one_line(name, x, y, message):
    with pytest.raises(PluginError) as e:
        MixTransform(name, 10)(x, y)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["cutmix", "mixup"])
def test_input_structures_of_a_dataloader_batch(name):
    """torchvision's TestCutMixMixUp structure check, on this API: unpacked, packed and collate_fn use."""
    from torch.utils.data import default_collate

    n, k = 32, 100

    class Unique(torch.utils.data.Dataset):  # all labels of a batch distinct: every row's sources are visible
        def __len__(self):
            return n

        def __getitem__(self, i):
            return torch.rand(3, 20, 20), i

    mix = MixTransform(name, k, seed=0)

    def check(img, target):
        out = mix.last
        assert img.shape == (n, 3, 20, 20) and target.shape == (n, k)
        torch.testing.assert_close(target.sum(-1), torch.ones(n))
        mixed = (out.y_b != torch.arange(n)) & (out.lam < 1)
        assert ((target != 0).sum(-1) == torch.where(mixed, 2, 1)).all()  # own partner or lam 1: one label

    dl = DataLoader(Unique(), batch_size=n)
    check(*mix(*next(iter(dl))))
    packed = next(iter(dl))
    assert isinstance(packed, list)
    check(*mix(packed))
    for collate in (lambda b: mix(default_collate(b)), lambda b: mix(*default_collate(b)), mix):
        check(*next(iter(DataLoader(Unique(), batch_size=n, collate_fn=collate))))


def test_cmixup_as_a_transform_is_the_mixer_on_an_identity_network():
    """Regression: partners drawn from the training set by label distance; the transform's batch is what the
    Mixer would feed the network (an nn.Sequential of identities shows it), for the same seed."""
    from torch import nn
    from mixcli.mixing import Mixer
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.randn(50, 4, generator=g), torch.randn(50, 1, generator=g)
    t = MixTransform("cmixup", seed=3, train=(xtr, ytr), sigma=0.5)
    m = Mixer("cmixup", nn.Sequential(nn.Identity(), nn.Identity()), seed=3, train=(xtr, ytr), sigma=0.5)
    m.start_epoch(1)
    for start in (0, 10, 20):
        idx = torch.arange(start, start + 10)
        xm, ym = t(xtr[idx], ytr[idx], index=idx)
        out = m(xtr[idx], ytr[idx], index=idx)
        torch.testing.assert_close(xm, out.logits)
        torch.testing.assert_close(ym, m.targets(out))
        lam = t.last.lam.view(-1, 1)
        torch.testing.assert_close(ym, lam * ytr[idx] + (1 - lam) * t.last.y_b)
    with pytest.raises(PluginError, match=r"transform\(x, y, index=...\)"):
        t(xtr[:4], ytr[:4])
    with pytest.raises(PluginError, match="regression targets must be floating point"):
        t(xtr[:4], torch.arange(4), index=torch.arange(4))


def test_mixup_with_training_set_partners_as_a_transform():
    x8, y = batch(n=30, h=8, w=8, dtype=torch.uint8)
    t = MixTransform("mixup", 10, seed=0, partners="dataset", train=(x8, y))
    xm, ys = t(x8[:6], y[:6])
    assert xm.shape == (6, 3, 8, 8) and xm.dtype == torch.uint8
    torch.testing.assert_close(ys.sum(1), torch.ones(6))
    out = t.last
    lam = out.lam.view(-1, 1)
    torch.testing.assert_close(ys, lam * torch.nn.functional.one_hot(y[:6], 10) + (1 - lam)
                               * torch.nn.functional.one_hot(out.y_b, 10))
    with pytest.raises(PluginError, match="int64 class ids"):
        t(x8[:6], torch.nn.functional.one_hot(y[:6], 10).float())
