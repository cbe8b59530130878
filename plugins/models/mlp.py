"""Multi-layer perceptron."""
import math

from torch import nn

from mixcli.api import Model, PluginError

ACTIVATIONS = {"relu": lambda s: nn.ReLU(), "leaky_relu": lambda s: nn.LeakyReLU(s), "gelu": lambda s: nn.GELU(),
               "tanh": lambda s: nn.Tanh()}


class MLP(Model):
    """Fully connected network; each hidden layer (Linear + activation) is one stage.

    Inputs of any shape are flattened. ``widths`` lists the hidden sizes; ``activation`` is relu, leaky_relu
    (slope ``negative_slope``), gelu or tanh. The C-Mixup reference MLP is ``widths: [128, 128]``,
    ``activation: leaky_relu``, ``negative_slope: 0.1``.
    """

    def __init__(self, in_shape, out_dim, widths: list = [128, 128], activation: str = "relu",
                 negative_slope: float = 0.1, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise PluginError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise PluginError(f"widths must be a non-empty list of positive integers, got {widths}")
        if not 0 <= dropout < 1:
            raise PluginError(f"dropout must be in [0, 1), got {dropout}")
        stages, d = [], int(math.prod(in_shape))
        for i, w in enumerate(widths):
            layers = [nn.Flatten()] if i == 0 else []
            layers += [nn.Linear(d, w), ACTIVATIONS[activation](negative_slope)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            stages.append(nn.Sequential(*layers))
            d = w
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Identity()
        self.classifier = nn.Linear(d, out_dim)
