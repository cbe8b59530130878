"""The device-resident data path: batching, on-device augmentation, normalization; the digits dataset."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import DataBundle, Split
from mixcli.data.device import DeviceData
from mixcli_plugins.datasets.digits import Digits


def bundle(n=40, c=3, h=8, augment=True, flip=True, pad_mode="reflect"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, h), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 4
    return DataBundle("classification", Split(x, y), Split(x[:8], y[:8]), num_classes=4, mean=(0.5,) * c,
                      std=(0.25,) * c, augment=augment, pad=2, pad_mode=pad_mode, flip=flip)


def test_batches_are_a_permutation_without_repeats_and_drop_the_partial_batch():
    dd = DeviceData(bundle(n=40, augment=False), torch.device("cpu"), seed=0)
    idx = torch.cat([b.index for b in dd.train_batches(16)])
    assert len(idx) == 32 and len(set(idx.tolist())) == 32
    first = torch.cat([b.index for b in DeviceData(bundle(augment=False), torch.device("cpu"), 0).train_batches(16)])
    assert torch.equal(idx, first)  # seeded
    other = torch.cat([b.index for b in DeviceData(bundle(augment=False), torch.device("cpu"), 1).train_batches(16)])
    assert not torch.equal(idx, other)


def test_normalization_without_augmentation():
    b = bundle(augment=False)
    dd = DeviceData(b, torch.device("cpu"), seed=0)
    batch = next(dd.train_batches(8))
    expect = (b.train.x[batch.index].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(batch.x, expect)
    assert torch.equal(batch.y, b.train.y[batch.index])


def test_augmented_images_are_padded_crops_possibly_flipped():
    for pad_mode, flip in (("reflect", True), ("constant", False)):
        b = bundle(augment=True, flip=flip, pad_mode=pad_mode)
        dd = DeviceData(b, torch.device("cpu"), seed=3)
        flips = 0
        for batch in dd.train_batches(8):
            raw = (batch.x * 0.25 + 0.5) * 255  # undo normalization
            for img, i in zip(raw, batch.index):
                padded = F.pad(b.train.x[i].float()[None], (2, 2, 2, 2), mode=pad_mode)[0]
                windows = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
                cands = windows + ([w.flip(2) for w in windows] if flip else [])
                hit = [k for k, w in enumerate(cands) if torch.allclose(w, img, atol=1e-3)]
                assert hit, "augmented image is not a crop of the padded original"
                flips += hit[0] >= len(windows)
        assert (flips > 0) == flip


def test_fetch_prepares_like_a_batch():
    b = bundle(augment=False)
    dd = DeviceData(b, torch.device("cpu"), seed=0)
    x, y = dd.fetch(torch.tensor([3, 5]))
    torch.testing.assert_close(x, (b.train.x[[3, 5]].float() / 255 - 0.5) / 0.25)
    assert y.tolist() == [3 % 4, 5 % 4]


def test_digits_split_is_fixed_stratified_and_seeded():
    d = Digits().load()
    assert (len(d.train), len(d.val), len(d.test)) == (1258, 180, 359)
    assert d.train.x.dtype == torch.uint8 and tuple(d.train.x.shape[1:]) == (1, 8, 8)
    assert torch.bincount(d.val.y).tolist() == [18] * 10
    again = Digits().load()
    assert torch.equal(d.test.x, again.test.x) and torch.equal(d.train.y, again.train.y)
    other = Digits(split_seed=1).load()
    assert not torch.equal(d.test.x, other.test.x)
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert torch.bincount(d.test.y).min() >= 35  # stratified: about 20% of every class


def test_digits_fraction_and_imbalance():
    full = torch.bincount(Digits().load().train.y, minlength=10).numpy()
    part = torch.bincount(Digits(fraction=0.3).load().train.y, minlength=10).numpy()
    assert (part == np.maximum(1, np.round(0.3 * full))).all()
    lt = torch.bincount(Digits(imbalance=10).load().train.y, minlength=10).numpy()
    n_max = full.min()
    assert lt.tolist() == [int(np.floor(n_max * 10 ** (-i / 9))) for i in range(10)]
