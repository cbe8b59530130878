"""A small convolutional network for small images (digits, MNIST, CIFAR-sized quick runs)."""
from torch import nn

from mixcli.api import Model, PluginError


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class CNN(Model):
    """Three conv stages (3x3 conv, BatchNorm, ReLU; width w, 2w, 4w), global average pool, linear head.

    Stage 2 halves the resolution, stage 3 halves it again while the map stays at least 8 pixels; an 8x8
    digit gives maps of 8x8, 4x4, 4x4 (so feature-level methods have a spatial map to work on).
    """

    def __init__(self, in_shape, out_dim, width: int = 32):
        super().__init__()
        if len(in_shape) != 3:
            raise PluginError(f"cnn needs image inputs (C, H, W), got inputs of shape {tuple(in_shape)}")
        if width < 1:
            raise PluginError(f"width must be >= 1, got {width}")
        c, h = in_shape[0], in_shape[1]
        self.stages = nn.ModuleList([
            _block(c, width, pool=False),
            _block(width, 2 * width, pool=h >= 4),
            _block(2 * width, 4 * width, pool=h // 2 >= 16),
        ])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, out_dim)
