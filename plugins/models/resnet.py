"""CIFAR-style residual networks: ResNet-18, pre-activation ResNet-18 and Wide ResNets (WRN-d-k).

Both keep the 32x32 resolution in the stem (one 3x3 convolution, stride 1, no max-pool), as in the CIFAR
experiments of the mixup literature (mixup, Manifold Mixup, CutMix, OpenMixup's ``ResNet_CIFAR``), and
expose four stages for feature-level methods: stem + layer1 (64 x 32 x 32), layer2 (128 x 16 x 16),
layer3 (256 x 8 x 8) and layer4 (512 x 4 x 4) for a 32x32 input.
"""
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from mixcli.api import Model, PluginError


def image_channels(name: str, in_shape) -> int:
    """The channel count of an image input (C, H, W); a clear error for anything else."""
    if len(in_shape) != 3:
        raise PluginError(f"{name} needs image inputs (C, H, W), got inputs of shape {tuple(in_shape)}")
    return int(in_shape[0])


def init_conv(module: nn.Module) -> None:
    """He (fan-out) initialization of every convolution; BatchNorm to weight 1, bias 0 (torchvision's)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet18(Model):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem without max-pool, four stages of two basic blocks.

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, with the CIFAR stem used
    by the mixup papers (Zhang et al. 2018; Verma et al. 2019; Yun et al. 2019) and OpenMixup. Built from
    torchvision's ``ResNet``/``BasicBlock`` with ``conv1`` replaced and ``maxpool`` removed. About 11.17M
    parameters for 10 classes (11,173,962) and 11.22M for 100.
    """

    paper = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (CIFAR stem)"

    def __init__(self, in_shape, out_dim):
        super().__init__()
        c = image_channels("resnet18", in_shape)
        net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=out_dim)
        net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stages = nn.ModuleList([
            nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1),
            net.layer2, net.layer3, net.layer4,
        ])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = net.fc


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut.

    A projection shortcut (1x1 conv, when the shape changes) is applied to the pre-activated input, as in
    He et al. (2016b) and the Manifold Mixup reference code; the identity shortcut carries the raw input.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        return out + short


STEMS = ("conv", "conv_bn_relu")


class PreActResNet18(Model):
    """Pre-activation ResNet-18, CIFAR variant (the backbone of Manifold Mixup, PuzzleMix and AlignMixup).

    He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016. The reference
    architecture of the mixup literature's CIFAR code (``kuangliu/pytorch-cifar`` ``PreActResNet18``, which
    ``vikasverma1077/manifold_mixup`` uses unchanged): a 3x3 stride-1 convolution stem (no max-pool), four
    stages of two :class:`PreActBlock` (64, 128, 256, 512 channels, strides 1, 2, 2, 2), then global average
    pooling of the last block's output and a linear classifier. There is no BN-ReLU after the last block,
    so the last stage's map (what AlignMix aligns) is the raw sum of the residual branch and the shortcut,
    as in the references. Parameters: 11,171,146 for 10 classes.

    ``stem: conv`` (default) is kuangliu's and Manifold Mixup's stem, a plain convolution;
    ``stem: conv_bn_relu`` is ``shashankvkt/AlignMixup_CVPR22``'s (``models/resnet.py``), convolution then
    BatchNorm and ReLU (+128 parameters). Weights keep PyTorch's default initialization, as in the
    references. The stem belongs to stage 1 (position 1 = after the stem and layer1, as Manifold Mixup's
    ``layer_mix`` 1).
    """

    paper = "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016"

    def __init__(self, in_shape, out_dim, stem: str = "conv"):
        super().__init__()
        c = image_channels("preact_resnet18", in_shape)
        if stem not in STEMS:
            raise PluginError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        stages, cin = [], 64
        for i, (w, s) in enumerate(zip(widths, strides)):
            layers = []
            if i == 0:
                layers.append(nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False))
                if stem == "conv_bn_relu":
                    layers += [nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
            layers += [PreActBlock(cin, w, s), PreActBlock(w, w, 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, out_dim)


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
