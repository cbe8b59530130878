"""CIFAR ResNet-18, pre-activation ResNet-18 and wide ResNets: shapes, positions, parameter counts, options."""
from __future__ import annotations

import pytest
import torch

from mixcli.api import PluginError
from mixcli.registry import REGISTRY


def build(name, k=10, in_shape=(3, 32, 32), **opts):
    torch.manual_seed(0)
    return REGISTRY.get("models", name)(in_shape, k, **opts)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------- parameter counts, derived layer by layer by hand
def conv(cin, cout, k=3):
    return cin * cout * k * k


def bn(c):
    return 2 * c


def resnet18_count(k):
    """He et al. 2016 basic blocks (conv-BN-ReLU-conv-BN, 1x1 conv + BN projection), CIFAR stem."""
    total, cin = conv(3, 64) + bn(64), 64
    for w in (64, 128, 256, 512):
        for j in range(2):
            c = cin if j == 0 else w
            total += conv(c, w) + bn(w) + conv(w, w) + bn(w) + (conv(c, w, 1) + bn(w) if c != w else 0)
        cin = w
    return total + 512 * k + k


def preact_count(widths, blocks, k, stem, final_bn=True, stem_bn=False):
    """Pre-activation blocks (BN-conv-BN-conv, 1x1 conv projection without BN), final BN (WRN; not the
    PreAct ResNet-18 of the references), linear head."""
    total, cin = conv(3, stem) + (bn(stem) if stem_bn else 0), stem
    for w in widths:
        for j in range(blocks):
            c = cin if j == 0 else w
            total += bn(c) + conv(c, w) + bn(w) + conv(w, w) + (conv(c, w, 1) if c != w else 0)
        cin = w
    return total + (bn(cin) if final_bn else 0) + cin * k + k


@pytest.mark.parametrize("k", [10, 100])
def test_parameter_counts(k):
    assert n_params(build("resnet18", k)) == resnet18_count(k)
    assert n_params(build("preact_resnet18", k)) == preact_count((64, 128, 256, 512), 2, k, 64, final_bn=False)
    assert n_params(build("preact_resnet18", k, stem="conv_bn_relu")) == preact_count(
        (64, 128, 256, 512), 2, k, 64, final_bn=False, stem_bn=True)
    assert n_params(build("wrn", k, depth=16, width=8)) == preact_count((128, 256, 512), 2, k, 16)
    assert n_params(build("wrn", k, depth=28, width=10)) == preact_count((160, 320, 640), 4, k, 16)


def test_published_sizes():
    # ResNet-18 (CIFAR stem) for CIFAR-10: 11,173,962, the count of the widely used CIFAR implementations
    assert resnet18_count(10) == 11_173_962
    # PreAct ResNet-18 of kuangliu/pytorch-cifar (and Manifold Mixup): 11,171,146 for CIFAR-10
    assert preact_count((64, 128, 256, 512), 2, 10, 64, final_bn=False) == 11_171_146
    # Zagoruyko & Komodakis (BMVC 2016), Tables 4 and 5: WRN-28-10 36.5M, WRN-16-8 11.0M parameters
    assert round(preact_count((160, 320, 640), 4, 10, 16) / 1e6, 1) == 36.5
    assert round(preact_count((128, 256, 512), 2, 10, 16) / 1e6, 1) == 11.0


# --------------------------------------------------------------------------------- shapes and positions
SMALL = [("resnet18", {}, [64, 128, 256, 512]), ("preact_resnet18", {}, [64, 128, 256, 512]),
         ("wrn", {"depth": 10, "width": 2}, [32, 64, 128])]


@pytest.mark.parametrize("name,opts,widths", SMALL)
def test_shapes_and_positions_compose(name, opts, widths):
    m = build(name, 7, **opts).eval()
    x = torch.randn(3, 3, 32, 32)
    sizes = [32, 16, 8, 4][: len(widths)]
    assert m.num_stages == len(widths) and m.embed_position == len(widths) + 1
    with torch.no_grad():
        logits = m(x)
        assert logits.shape == (3, 7)
        for pos in range(m.embed_position + 1):
            h = m.forward_to(x, pos)
            if pos == 0:
                assert h.shape == x.shape
            elif pos <= m.num_stages:
                assert h.shape == (3, widths[pos - 1], sizes[pos - 1], sizes[pos - 1])
            else:
                assert h.shape == (3, widths[-1])
            torch.testing.assert_close(m.forward_from(h, pos), logits, rtol=1e-5, atol=1e-5)


def test_wrn_stages_end_activated():
    """The last stage of a wide ResNet ends with the final BN-ReLU (as the reference WRN): non-negative."""
    m = build("wrn", depth=10, width=1)
    h = m.forward_to(torch.randn(2, 3, 32, 32), m.num_stages)
    assert (h >= 0).all() and (h > 0).any()


class RefPreActBlock(torch.nn.Module):
    """The reference pre-activation block (kuangliu/pytorch-cifar, AlignMixup_CVPR22), written out here."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        nn = torch.nn
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False) if stride != 1 or cin != planes else None

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(torch.relu(self.bn2(self.conv1(out)))) + short


class RefPreActResNet18(torch.nn.Module):
    """conv stem (+ BN-ReLU for AlignMix), layer1-4, avg_pool2d(4), linear: no final BN-ReLU."""

    def __init__(self, k, stem_bn):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64) if stem_bn else None
        blocks, cin = [], 64
        for w, s in zip((64, 128, 256, 512), (1, 2, 2, 2)):
            blocks += [RefPreActBlock(cin, w, s), RefPreActBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(512, k)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = torch.relu(self.bn1(out))
        out = torch.nn.functional.avg_pool2d(self.blocks(out), 4)
        return self.linear(out.flatten(1))


@pytest.mark.parametrize("stem", ["conv", "conv_bn_relu"])
def test_preact_resnet18_computes_the_reference_function(stem):
    m = build("preact_resnet18", 10, stem=stem)
    ref = RefPreActResNet18(10, stem_bn=stem == "conv_bn_relu")
    mine, theirs = list(m.parameters()) + list(m.buffers()), list(ref.parameters()) + list(ref.buffers())
    assert [t.shape for t in mine] == [t.shape for t in theirs]  # same layers, in the same order
    with torch.no_grad():
        for a, b in zip(mine, theirs):
            b.copy_(a)
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        m.train(mode == "train"), ref.train(mode == "train")
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)
    h = m.eval().forward_to(x, m.num_stages)
    assert (h < 0).any()  # the last stage is not followed by a BN-ReLU
    with pytest.raises(PluginError, match="stem must be one of conv, conv_bn_relu"):
        build("preact_resnet18", stem="bn")


def test_other_input_sizes_and_channels():
    m = build("resnet18", 10, in_shape=(1, 28, 28)).eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert m.forward_to(torch.randn(2, 1, 28, 28), 4).shape == (2, 512, 4, 4)
    w = build("wrn", 5, in_shape=(3, 64, 64), depth=10, width=1).eval()
    assert w(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_wrn_dropout_only_in_training():
    m = build("wrn", 4, depth=10, width=1, dropout=0.5)
    x = torch.randn(4, 3, 32, 32)
    m.train()
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    assert sum(isinstance(mod, torch.nn.Dropout) for mod in m.modules()) == 3  # one per block


def test_a_training_step_fits_a_batch():
    """A few SGD steps on one fixed batch lower the loss (gradients reach every stage)."""
    m = build("preact_resnet18", 4)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in m.stages[0].parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name,opts,match", [
    ("wrn", {"depth": 27}, "depth must be 6n \\+ 4"),
    ("wrn", {"depth": 4}, "depth must be 6n \\+ 4"),
    ("wrn", {"width": 0}, "width must be an integer >= 1"),
    ("wrn", {"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
])
def test_bad_options(name, opts, match):
    with pytest.raises(PluginError, match=match):
        build(name, **opts)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn"])
def test_needs_images(name):
    with pytest.raises(PluginError, match=f"{name} needs image inputs \\(C, H, W\\)"):
        build(name, in_shape=(20,))
