"""SelMix ``protocol: reference``, round 3: the gain's lbar is the reference optimisers' default (0.8) for
every objective, and x1 and x2 go through two forward passes (one stays an option)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mixcli.api import PluginError
from mixcli_plugins.methods.selmix import (OBJECTIVES, REFERENCE_GAIN_LAM_MIN, SelMix, coverage_multipliers,
                                           gain_rates, head_mask, mixed_features, next_multipliers,
                                           recall_weights, recalls)

from test_selmix_reference import reference_gain


class Ctx:
    step, epoch, artifacts_dir = 0, 0, None


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("lam_min", [0.3, 0.6, 0.9])
def test_reference_gain_uses_lbar_08_for_every_objective(objective, lam_min, monkeypatch):
    rng = np.random.default_rng(1)
    k, d = 6, 5
    C = rng.uniform(0.2, 1, (k, k)) + np.eye(k) * 4
    C /= C.sum()
    mu, W, b = rng.normal(size=(k, d)), rng.normal(size=(k, d)), rng.normal(size=k)
    sm = SelMix(objective=objective, protocol="reference", lam_min=lam_min)
    sm.k, sm.head = k, head_mask(np.arange(k, 0, -1))
    sm.mult = np.full(2 if objective == "min_ht_recall" else k, 1.0 / (2 if objective == "min_ht_recall" else k))
    prev = sm.mult.copy()
    monkeypatch.setattr(sm, "statistics", lambda model, ctx: (C, mu, mu @ W.T + b))
    rec = sm.update_gains(None, Ctx())
    # D as the reference's objective builds it (this port's formulas are checked in test_selmix.py)
    r = recalls(C)
    cov = coverage_multipliers(C, 0.95, 0.1, 100.0) if objective == "mean_recall_min_coverage" else None
    mult = prev
    if objective == "min_recall":
        mult = next_multipliers(prev, r, 50.0, 0.0)
    elif objective == "min_ht_recall":
        mult = next_multipliers(prev, np.array([r[sm.head].mean(), r[~sm.head].mean()]), 50.0, 0.0)
    D = gain_rates(C, recall_weights(C, objective, mult, sm.head), cov)
    np.testing.assert_allclose(rec["G"], reference_gain(mu, W, b, D, lambda_min=0.6), rtol=1e-9, atol=1e-12)
    assert REFERENCE_GAIN_LAM_MIN[objective] == 0.6


class Net(nn.Module):
    """forward_to: a linear layer and a BatchNorm in training mode (batch statistics)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def forward_to(self, x, pos):
        return self.body(x)


def test_two_forwards_normalise_each_half_with_its_own_statistics():
    torch.manual_seed(0)
    net = Net().train()
    x1, x2 = torch.randn(8, 3), torch.randn(8, 3) * 3 + 2
    lam = torch.rand(8)
    two = mixed_features(net, torch.cat([x1, x2]), lam, None, forwards=2)
    l = lam[:, None]
    torch.testing.assert_close(two, l * net.body(x1) + (1 - l) * net.body(x2))
    one = mixed_features(net, torch.cat([x1, x2]), lam, None, forwards=1)
    h = net.body(torch.cat([x1, x2]))
    torch.testing.assert_close(one, l * h[:8] + (1 - l) * h[8:])
    assert not torch.allclose(one, two, atol=1e-3)  # batch statistics over both halves move the features
    net.eval()  # in eval mode (the paper protocol's frozen BatchNorm) the two are the same
    torch.testing.assert_close(mixed_features(net, torch.cat([x1, x2]), lam, None, 1),
                               mixed_features(net, torch.cat([x1, x2]), lam, None, 2))


def test_forwards_default_follows_the_protocol_and_is_checked():
    assert SelMix(protocol="reference").forwards == 2 and SelMix().forwards == 1
    assert SelMix(protocol="reference", forwards=1).forwards == 1
    with pytest.raises(PluginError, match="forwards must be 1"):
        SelMix(forwards=3)
