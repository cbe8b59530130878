"""OOD synthetic sets: Outlier Exposure's Gaussian and uniform noise (network inputs, CIFAR/test.py) and
mixcli's earlier pixel-space sets under their own names."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from test_evaluators import _digits, _run_eval


class Spy(nn.Module):
    """Records every input batch; logits from a fixed random linear map."""

    def __init__(self, shape, k=10):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(int(np.prod(shape)), k)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def ood_inputs(dataset, **opts):
    data = _digits()
    model = Spy(data.input_shape).eval()
    out, dd = _run_eval(model, data, [{"name": "ood", "dataset": dataset, **opts}])
    seen = torch.cat(model.seen)
    n_test = len(data.test.y)
    return seen[n_test:], seen[:n_test], dd, n_test, out


def test_gaussian_noise_is_outlier_exposures_input_space_set():
    x, x_in, dd, n_test, out = ood_inputs("gaussian_noise")
    assert len(x) == n_test // 5  # ood_num_examples = len(test_data) // 5
    v = x.flatten().double().numpy()
    assert v.min() >= -1 and v.max() <= 1
    # clip(N(0, 0.5^2), -1, 1): P(|x| = 1) = 2 (1 - Phi(2)); the unclipped part is N(0, 0.25) restricted
    sat = np.mean(np.abs(v) == 1)
    assert sat == pytest.approx(2 * stats.norm.sf(2), abs=0.01)
    inner = v[np.abs(v) < 1]
    assert stats.kstest(inner, stats.truncnorm(-2, 2, scale=0.5).cdf).pvalue > 1e-3
    # the network sees the noise as drawn, while the test images reach it normalized (a shift that is not 0)
    assert float(dd.shift.abs().max()) > 0.1
    assert abs(v.mean()) < 0.02
    assert 0 <= out["test_ood_msp_auroc"] <= 1


def test_uniform_noise_is_u_minus1_1_network_input():
    x, _, _, n_test, _ = ood_inputs("uniform_noise")
    v = x.flatten().double().numpy()
    assert len(x) == n_test // 5
    assert stats.kstest(v, stats.uniform(-1, 2).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name", ["pixel_uniform_noise", "pixel_gaussian_noise"])
def test_pixel_sets_are_normalized_like_the_test_images(name):
    x, _, dd, n_test, _ = ood_inputs(name)
    assert len(x) == n_test
    # undo the dataset's normalization (x = shift + scale * 255 p): pixels back in [0, 1]
    p = ((x - dd.shift) / dd.scale / 255.0).flatten().double().numpy()
    assert p.min() >= -1e-5 and p.max() <= 1 + 1e-5
    if name == "pixel_gaussian_noise":  # clip(N(0.5, 1), 0, 1): P(saturated) = 2 (1 - Phi(0.5))
        sat = np.mean((p < 1e-5) | (p > 1 - 1e-5))
        assert sat == pytest.approx(2 * stats.norm.sf(0.5), abs=0.01)
    else:
        assert stats.kstest(p, stats.uniform(0, 1).cdf).pvalue > 1e-3


def test_max_images_caps_outlier_exposure_sets():
    x, *_ = ood_inputs("gaussian_noise", max_images=7)
    assert len(x) == 7
