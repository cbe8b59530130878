"""The device-resident data path.

A split is moved to the training device once (images stay uint8). Each epoch a seeded permutation is drawn on
the device and batches are sliced from it; augmentation (random crop with padding, horizontal flip) and
normalization run on the whole batch on the device: no DataLoader, no per-sample Python, no host sync.
The last partial training batch is dropped (as in the reference implementations of the methods).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .api import Batch, DataBundle, Split


class DeviceData:
    """One dataset on one device, with its batch preparation."""

    def __init__(self, data: DataBundle, device: torch.device, seed: int) -> None:
        self.data = data
        self.device = device
        self.splits = {k: s.to(device) for k, s in data.splits().items()}
        self.images = data.train.x.dtype == torch.uint8
        if self.images and data.mean is not None:
            c = data.train.x.shape[1]
            self.mean = torch.tensor(data.mean, device=device, dtype=torch.float32).view(1, c, 1, 1) * 255
            self.std = torch.tensor(data.std, device=device, dtype=torch.float32).view(1, c, 1, 1) * 255
        else:
            self.mean = self.std = None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @property
    def train(self) -> Split:
        return self.splits["train"]

    # --------------------------------------------------------------------------------------------- prepare
    def prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 images -> augmented (train only) and normalized float; float features pass through."""
        if not self.images:
            return x.float()
        x = x.float()
        if train and self.data.augment:
            x = self.augment(x)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        else:
            x = x / 255.0
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop (``pad`` pixels of padding, one offset per image) and horizontal flip (p = 1/2)."""
        b, _, h, w = x.shape
        p = self.data.pad
        g = self.generator
        if p > 0:
            xp = F.pad(x, (p, p, p, p), mode=self.data.pad_mode)
            dy = torch.randint(0, 2 * p + 1, (b,), device=x.device, generator=g)
            dx = torch.randint(0, 2 * p + 1, (b,), device=x.device, generator=g)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            bi = torch.arange(b, device=x.device)[:, None, None, None]
            ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = xp[bi, ci, rows, cols]
        if not self.data.flip:
            return x
        flip = torch.rand(b, device=x.device, generator=g) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def fetch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training examples at ``index``, prepared like a training batch."""
        t = self.train
        return self.prepare(t.x[index], train=True), t.y[index]

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
            yield Batch(self.prepare(t.x[idx], train=True), t.y[idx], idx)

    def eval_batches(self, split: str, batch_size: int):
        s = self.splits[split]
        for i in range(0, len(s), batch_size):
            yield self.prepare(s.x[i:i + batch_size], train=False), s.y[i:i + batch_size]
