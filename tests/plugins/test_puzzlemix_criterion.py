"""PuzzleMix ``criterion: bce_softmax``: the reference's nn.BCELoss of the softmax, checked against a direct
computation; the default leaves the loss to the loss plugin."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, PluginError
from mixcli_plugins.methods.puzzlemix import PuzzleMix
from mixcli_plugins.models.cnn import CNN

from test_methods_dynamic import make_ctx


def run_step(criterion):
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = PuzzleMix(criterion=criterion, solver="exact")
    ctx = make_ctx(x8, y, 4, model=model)
    with warnings.catch_warnings():  # solver exact: no gco needed, no warning asked for
        warnings.simplefilter("ignore")
        m.setup(ctx)
    return m(model, Batch(x8.float() / 255, y, torch.arange(16)), ctx), y


def test_bce_softmax_is_the_references_bceloss():
    out, y = run_step("bce_softmax")
    p = torch.softmax(out.logits.double(), 1)
    t = out.lam.double()[:, None] * F.one_hot(y, 4) + (1 - out.lam.double()[:, None]) * F.one_hot(out.y_b, 4)
    ref = -(t * p.log() + (1 - t) * (1 - p).log()).mean()  # nn.BCELoss(): the mean over all B x K entries
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    out.loss.backward()  # differentiable


def test_soft_ce_default_leaves_the_loss_to_the_plugin_and_bad_criterion_is_clear():
    out, _ = run_step("soft_ce")
    assert out.loss is None
    with pytest.raises(PluginError, match="criterion must be one of soft_ce, bce_softmax"):
        PuzzleMix(criterion="bce")
