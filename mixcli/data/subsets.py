"""Seeded, exact subsets of a labelled training set, shared by every dataset plugin.

- :func:`long_tail_counts`: the standard exponential long-tail profile ``n_i = floor(n_max * rho^(-i/(K-1)))``
  (Cui et al. 2019; Cao et al. 2019), class 0 the head. CIFAR-10 with ``n_max=5000, rho=100`` gives 12,406
  images, CIFAR-100 with ``n_max=500`` gives 10,847.
- :func:`stratified_fraction`: keep ``round(fraction * n_c)`` (at least 1) examples of every class ``c``.
- :func:`balanced_split`: hold out the same number of examples of every class (a balanced validation set).

All functions take labels as a numpy array and return sorted numpy index arrays; randomness comes only from
the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import math

import numpy as np

from ..api import PluginError


def long_tail_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
    """Per-class sizes of the exponential long-tail profile, head (class 0) first."""
    if rho < 1:
        raise PluginError(f"imbalance must be >= 1 (the ratio of the largest to the smallest class), got {rho}")
    if num_classes == 1:
        return [n_max]
    return [int(math.floor(n_max * rho ** (-i / (num_classes - 1)))) for i in range(num_classes)]


def long_tail(labels: np.ndarray, rho: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of a long-tailed subset with ratio ``rho``; ``n_max`` is the smallest class size of the input
    (so every class can supply its quota). Within a class the first ``n_i`` examples are kept, in dataset
    order (the reference convention) unless ``rng`` is given, in which case they are drawn at random."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    sizes = [int((labels == c).sum()) for c in classes]
    counts = long_tail_counts(min(sizes), len(classes), rho)
    keep = []
    for c, n in zip(classes, counts):
        idx = np.flatnonzero(labels == c)
        if rng is not None:
            idx = rng.permutation(idx)
        keep.append(idx[: max(n, 1)])
    return np.sort(np.concatenate(keep))


def stratified_fraction(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified random subset holding ``fraction`` of every class (at least one example)."""
    if not 0 < fraction <= 1:
        raise PluginError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def balanced_split(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with exactly ``per_class`` held-out examples of every class."""
    labels = np.asarray(labels)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class >= len(idx):
            raise PluginError(
                f"val_size asks for {per_class} examples of class {c}, which has only {len(idx)}; "
                "use a smaller val_size")
        held.append(rng.choice(idx, size=per_class, replace=False))
    held = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return rest, held


def val_per_class(val_size: int | float, labels: np.ndarray) -> int:
    """``val_size`` as examples per class: an int is a total (split evenly), a float in (0,1) a fraction of
    the smallest class."""
    k = len(np.unique(labels))
    if isinstance(val_size, float) and 0 < val_size < 1:
        smallest = min(int((labels == c).sum()) for c in np.unique(labels))
        return max(1, int(round(val_size * smallest)))
    n = int(val_size)
    if n % k:
        raise PluginError(f"val_size={n} must be a multiple of the number of classes ({k}) for a balanced split")
    return n // k


def build_classification(train_x, train_y, test_x, test_y, *, num_classes: int, fraction: float = 1.0,
                         imbalance: float = 1.0, val_size: int | float = 0, split_seed: int = 0,
                         augment: bool = False, mean=None, std=None, pad: int = 4, pad_mode: str = "reflect", flip: bool = True,
                         class_names=None):
    """Turn full train/test arrays into a :class:`~mixcli.api.DataBundle`, applying in this order:
    a balanced validation split held out of train (``val_size``), the long-tail profile (``imbalance``),
    then a stratified subset (``fraction``). All three are seeded by ``split_seed`` and are the same for
    every run seed, so methods and seeds are compared on identical data."""
    import torch

    from ..api import DataBundle, Split

    train_y = np.asarray(train_y, dtype=np.int64)
    rng = np.random.default_rng(split_seed)
    idx = np.arange(len(train_y))
    val = None
    if val_size:
        rest, held = balanced_split(train_y, val_per_class(val_size, train_y), rng)
        val, idx = held, rest
    if imbalance and imbalance != 1:
        idx = idx[long_tail(train_y[idx], imbalance)]
    if fraction != 1:
        idx = idx[stratified_fraction(train_y[idx], fraction, rng)]

    def split(x, y, rows):
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Split(torch.as_tensor(x)[rows], torch.as_tensor(y, dtype=torch.long)[rows])

    return DataBundle(
        task="classification",
        train=split(train_x, train_y, idx),
        val=None if val is None else split(train_x, train_y, val),
        test=split(test_x, test_y, np.arange(len(test_y))),
        num_classes=num_classes, mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
        augment=augment, pad=pad, pad_mode=pad_mode, flip=flip, class_names=class_names)
