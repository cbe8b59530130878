"""Small image bundles made by the tests (random uint8 images, CIFAR's normalisation), shared by the
data-path tests and the GPU tests."""
from __future__ import annotations

import torch

from mixcli.api import DataBundle, Split

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def bundle(n=24, c=3, h=12, w=10, pad=4, pad_mode="reflect", flip=True, augment=True, mean=MEAN, std=STD):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3
    return DataBundle("classification", Split(x, y), Split(x[:5].clone(), y[:5].clone()), num_classes=3,
                      mean=mean if c == 3 else None, std=std if c == 3 else None, augment=augment, pad=pad,
                      pad_mode=pad_mode, flip=flip)
