"""Wide residual networks (WRN-d-k) for CIFAR-sized images."""
from torch import nn

from mixcli.api import Model, PluginError
from mixcli_plugins.models.resnet import PreActBlock, image_channels, init_conv


class WideResNet(Model):
    """Wide ResNet WRN-depth-width with pre-activation blocks and optional dropout between the convolutions.

    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016. A 3x3 stem convolution to 16 channels, then
    three groups of n = (depth - 4) / 6 blocks of width 16k, 32k, 64k (strides 1, 2, 2); each block is
    BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3 (the paper's B(3,3)), with a 1x1 projection shortcut where the
    shape changes. Stages: stem + group 1, group 2, group 3 (closed by the final BN-ReLU); then global average
    pooling and a linear classifier. WRN-28-10 has 36.5M parameters, WRN-16-8 11.0M (paper, Table 4 / 5).
    ``dropout`` is the paper's 0.3 when used.
    """

    paper = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"

    def __init__(self, in_shape, out_dim, depth: int = 28, width: int = 10, dropout: float = 0.0):
        super().__init__()
        c = image_channels("wrn", in_shape)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise PluginError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if not isinstance(width, int) or width < 1:
            raise PluginError(f"width must be an integer >= 1, got {width}")
        if not 0 <= dropout < 1:
            raise PluginError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        stages, cin = [], 16
        for i, (w, s) in enumerate(zip((16 * width, 32 * width, 64 * width), (1, 2, 2))):
            layers = [nn.Conv2d(c, 16, 3, stride=1, padding=1, bias=False)] if i == 0 else []
            layers += [PreActBlock(cin if j == 0 else w, w, s if j == 0 else 1, dropout) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = w
        stages[-1].append(nn.BatchNorm2d(cin))
        stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, out_dim)
        init_conv(self)
        nn.init.zeros_(self.classifier.bias)
