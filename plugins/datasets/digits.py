"""The 8x8 handwritten digits that ship inside scikit-learn (offline, real data)."""
import numpy as np

from mixcli.api import DataBundle, Dataset, PluginError
from mixcli.data.subsets import build_classification, stratified_fraction


class Digits(Dataset):
    """UCI handwritten digits, 1797 8x8 grey images of 10 classes, bundled with scikit-learn (no download).

    Fixed seeded split (``split_seed``): a stratified 20% test set (359 images), then a balanced validation
    set of ``val_size`` images (default 180, 18 per class; 0 for none) held out of the remaining 1438; the rest
    (1258) is the training set. ``imbalance`` (long-tail ratio rho) and ``fraction`` (stratified subset) apply to
    the training set only. Pixels (0..16) are scaled to uint8 0..255; ``augment`` adds random 1-pixel shifts
    (random crop with 1 pixel of zero padding; no flips, which do not preserve digits).
    """

    task = "classification"
    paper = "Alpaydin & Kaynak, UCI Optical Recognition of Handwritten Digits, 1998"

    def __init__(self, fraction: float = 1.0, imbalance: float = 1.0, val_size: int = 180, split_seed: int = 0,
                 augment: bool = False):
        if not 0 < fraction <= 1:
            raise PluginError(f"fraction must be in (0, 1], got {fraction}")
        if imbalance < 1:
            raise PluginError(f"imbalance must be >= 1 (largest / smallest class), got {imbalance}")
        if val_size < 0:
            raise PluginError(f"val_size must be >= 0, got {val_size}")
        self.fraction, self.imbalance, self.val_size = fraction, imbalance, val_size
        self.split_seed, self.augment = split_seed, augment

    def shape(self):
        return (1, 8, 8), 10

    def load(self) -> DataBundle:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
        y = d.target.astype(np.int64)
        test = stratified_fraction(y, 0.2, np.random.default_rng(self.split_seed + 10_000))
        train = np.setdiff1d(np.arange(len(y)), test)
        mean, std = float(x[train].mean() / 255), float(x[train].std() / 255)
        return build_classification(
            x[train], y[train], x[test], y[test], num_classes=10, fraction=self.fraction,
            imbalance=self.imbalance, val_size=self.val_size, split_seed=self.split_seed, augment=self.augment,
            mean=(mean,), std=(std,), pad=1, pad_mode="constant", flip=False, class_names=[str(i) for i in range(10)])
