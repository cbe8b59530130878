"""Random-feature model: a fixed random first layer and a trainable linear readout."""
import math

import torch
from torch import nn

from mixcli.api import Model, PluginError

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class Features(nn.Module):
    """``act(x W^T) / sqrt(width)`` with ``W`` (width x in_dim) a fixed buffer of N(0, 1/in_dim) entries."""

    def __init__(self, in_dim: int, width: int, activation: str) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(width, in_dim) / math.sqrt(in_dim))
        self.act = ACTIVATIONS[activation]
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x.flatten(1) @ self.weight.T) * self.scale


class RandomFeatures(Model):
    """Random-feature regression/classification model: only the last (linear) layer is trained.

    ``phi(x) = act(W x) / sqrt(width)`` with ``W`` drawn once from N(0, 1/in_dim) (seeded by the run seed)
    and kept fixed (a buffer, not a parameter, so no optimizer ever updates it); the output is
    ``phi(x) @ V + b``, the only trainable weights. With ``zero_init`` (default) ``V`` (and ``b``) start at
    zero, the setting of the gradient-descent analyses of random-feature least squares (e.g. Liu et al.,
    ICLR 2023, used with the ``teacher_student`` dataset). Inputs of any shape are flattened.
    ``activation``: relu or tanh; ``bias``: learn an output bias.
    """

    paper = "Rahimi & Recht, Random Features for Large-Scale Kernel Machines, NeurIPS 2007"

    def __init__(self, in_shape, out_dim, width: int = 2000, activation: str = "relu", bias: bool = False,
                 zero_init: bool = True):
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise PluginError(f"width must be a positive integer, got {width!r}")
        if activation not in ACTIVATIONS:
            raise PluginError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.stages = nn.ModuleList([Features(int(math.prod(in_shape)), width, activation)])
        self.pool = nn.Identity()
        self.classifier = nn.Linear(width, out_dim, bias=bias)
        if zero_init:
            nn.init.zeros_(self.classifier.weight)
            if bias:
                nn.init.zeros_(self.classifier.bias)
