"""The device-resident data path.

A split is moved to the training device once (images stay uint8). Each epoch a seeded permutation is drawn on
the device and batches are sliced from it; augmentation (random crop with padding, horizontal flip) and
normalization run on the whole batch on the device: no DataLoader, no per-sample Python, no host sync.
The last partial training batch is dropped (as in the reference implementations of the methods).
"""
from __future__ import annotations

import torch

from ..api import Batch, DataBundle, PluginError, Split


def check_bundle(data: DataBundle, name: str) -> None:
    """What any dataset plugin returns, checked once when loading (before anything reaches the device):
    every split has as many labels as inputs; class labels are integers in [0, num_classes); regression
    targets are finite. A violation is a :class:`PluginError` naming the dataset and the split."""
    where = f"dataset '{name}'"
    if data.task == "classification" and (not isinstance(data.num_classes, int) or data.num_classes < 1):
        raise PluginError(f"{where}: num_classes must be a positive integer, got {data.num_classes!r}")
    for split, s in data.splits().items():
        if s.x.shape[0] != s.y.shape[0]:
            raise PluginError(f"{where}: the {split} split has {s.x.shape[0]} inputs but {s.y.shape[0]} labels")
        if not len(s):
            continue
        if data.task == "classification":
            if s.y.dtype.is_floating_point or s.y.dtype == torch.bool or s.y.dim() != 1:
                raise PluginError(f"{where}: {split} labels must be integer class ids of shape (N,), got "
                                  f"{s.y.dtype} of shape {tuple(s.y.shape)}")
            lo, hi = int(s.y.min()), int(s.y.max())
            if lo < 0 or hi >= data.num_classes:
                bad = int(((s.y < 0) | (s.y >= data.num_classes)).sum())
                raise PluginError(f"{where}: the {split} split has {bad} label(s) outside [0, "
                                  f"{data.num_classes}) (found {lo}..{hi}); labels must be class ids "
                                  f"0..{data.num_classes - 1}")
        elif not bool(torch.isfinite(s.y).all()):
            raise PluginError(f"{where}: the {split} split has non-finite (NaN or infinite) targets")


class DeviceData:
    """One dataset on one device, with its batch preparation."""

    def __init__(self, data: DataBundle, device: torch.device, seed: int) -> None:
        self.data = data
        self.device = device
        self.images = data.train.x.dtype == torch.uint8
        # CUDA: images are stored (once) and batches produced channels_last, the layout the model runs in
        self.channels_last = self.images and data.train.x.dim() == 4 and device.type == "cuda"
        self.splits = {k: self._store(s.to(device)) for k, s in data.splits().items()}
        if self.images:  # x_norm = x_uint8 * scale + shift, fused into one kernel (torch.addcmul)
            c = data.train.x.shape[1]
            mean = torch.tensor(data.mean if data.mean is not None else (0.0,) * c, dtype=torch.float64)
            std = torch.tensor(data.std if data.std is not None else (1.0,) * c, dtype=torch.float64)
            self.scale = (1.0 / (255.0 * std)).float().view(1, c, 1, 1).to(device)
            self.shift = (-mean / std).float().view(1, c, 1, 1).to(device)
            if data.augment:
                self._crop_tables(*data.train.x.shape[1:])
        #: training examples per class (head/tail order of the recall metrics), counted once
        self.class_counts = (torch.bincount(data.train.y, minlength=data.num_classes).numpy()
                             if data.task == "classification" else None)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def _store(self, s: Split) -> Split:
        if self.channels_last and s.x.dim() == 4:
            s.x = s.x.contiguous(memory_format=torch.channels_last)
        return s

    def _crop_tables(self, c: int, h: int, w: int) -> None:
        """Index tables for the random crop, built once: padded coordinate -> source coordinate (and, for
        constant padding, whether it falls inside the image)."""
        p, mode, dev = self.data.pad, self.data.pad_mode, self.device
        if mode not in ("reflect", "replicate", "circular", "constant"):
            raise PluginError(f"pad_mode must be reflect, replicate, circular or constant, got {mode!r}")
        if mode == "reflect" and p >= min(h, w):
            raise PluginError(f"reflect padding needs pad < image size, got pad {p} for {h}x{w} images")
        tables = []
        for n in (h, w):
            i = torch.arange(-p, n + p, device=dev)
            inside = (i >= 0) & (i < n)
            if mode == "reflect":
                i = i.abs()
                i = torch.where(i >= n, 2 * (n - 1) - i, i)
            elif mode == "circular":
                i = i % n
            else:  # replicate; constant reads the edge and is then masked to 0
                i = i.clamp(0, n - 1)
            tables.append((i, inside.to(torch.uint8)))
        (self._rmap, self._rin), (self._cmap, self._cin) = tables
        self._ar_h = torch.arange(h, device=dev)
        self._ar_w = torch.arange(w, device=dev)
        self._ar_c = torch.arange(c, device=dev)

    @property
    def train(self) -> Split:
        return self.splits["train"]

    # --------------------------------------------------------------------------------------------- prepare
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized float32 ((x / 255 - mean) / std); float features pass through."""
        if not self.images:
            return x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(self.shift, x, self.scale)

    def prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A batch of stored inputs -> augmented (train only) and normalized float."""
        if train and self.images and self.data.augment:
            return self.normalize(self.crop_flip(x, torch.arange(x.shape[0], device=x.device)))
        return self.normalize(x)

    def crop_flip(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Images ``x[index]`` (uint8), randomly cropped after ``pad`` pixels of padding (one offset per image)
        and flipped horizontally with probability 1/2, in one gather from ``x`` (no padded copy is made)."""
        b, p, g = index.shape[0], self.data.pad, self.generator
        rows, cols = self._ar_h.expand(b, -1), self._ar_w.expand(b, -1)
        if p > 0:
            rows = self._ar_h + torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=g)
            cols = self._ar_w + torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=g)
        if self.data.flip:
            flip = torch.rand(b, device=x.device, generator=g) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        mask = None
        if p > 0:
            if self.data.pad_mode == "constant":
                mask = self._rin[rows][:, :, None] * self._cin[cols][:, None, :]  # (B, H, W)
            rows, cols = self._rmap[rows], self._cmap[cols]
        if self.channels_last:  # gather in (B, H, W, C) order: a channels_last result
            out = x[index[:, None, None, None], self._ar_c, rows[:, :, None, None], cols[:, None, :, None]]
            out = out if mask is None else out * mask[..., None]
            return out.permute(0, 3, 1, 2)
        out = x[index[:, None, None, None], self._ar_c[:, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        return out if mask is None else out * mask[:, None]

    def train_inputs(self, index: torch.Tensor) -> torch.Tensor:
        """Training inputs at ``index``, augmented and normalized, gathered straight from the stored split."""
        x = self.train.x
        if self.images and self.data.augment:
            return self.normalize(self.crop_flip(x, index))
        return self.normalize(x[index])

    def fetch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples at ``index``, prepared like a training batch."""
        return self.train_inputs(index), self.train.y[index]

    # --------------------------------------------------------------------------------------------- iterate
    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train) // batch_size)

    def train_batches(self, batch_size: int):
        t = self.train
        n = len(t)
        perm = torch.randperm(n, device=self.device, generator=self.generator)
        bs = min(batch_size, n)
        for i in range(self.steps_per_epoch(batch_size)):
            idx = perm[i * bs:(i + 1) * bs]
            yield Batch(self.train_inputs(idx), t.y[idx], idx)

    def eval_batches(self, split: str, batch_size: int):
        s = self.splits[split]
        for i in range(0, len(s), batch_size):
            yield self.prepare(s.x[i:i + batch_size], train=False), s.y[i:i + batch_size]
