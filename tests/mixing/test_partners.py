"""Behaviour of mixcli.mixing.partners: C-Mixup partner distributions, limits, block-wise equality, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from mixcli.api import PluginError
from mixcli.mixing.partners import (
    PartnerSampler, full_matrix, iter_partner_probs, kernel_weights, partner_probs, sample_partners,
)

DRAWS = 20000

Y1 = np.array([0.0, 0.3, 0.5, 1.1, 1.2, 2.0, 2.4, 3.5])                       # N=8, 1-D labels
Y2 = np.array([[0.0, 0.0], [0.2, 0.1], [0.5, -0.3], [1.0, 0.4], [0.9, 1.1],
               [1.6, 0.2], [-0.4, 0.8], [2.1, 1.9]])                          # N=8, 2-D labels
# tophat bandwidths used below (0.95, 1.25) are >= 0.02 away from every pairwise distance of Y1 and Y2,
# so float32 vs float64 rounding cannot move a label across the ``d < sigma`` boundary.


def closed_form(y: np.ndarray, anchor: int, sigma: float, kernel: str) -> np.ndarray:
    """P(. | anchor) in float64 numpy, independent of the module under test."""
    y = y.reshape(len(y), -1).astype(np.float64)
    dist = np.sqrt(((y - y[anchor]) ** 2).sum(axis=1))
    if kernel == "gaussian":
        k = np.exp(-dist ** 2 / (2 * sigma ** 2))
    else:
        k = (dist < sigma).astype(np.float64)
    return k / k.sum()


def gof_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit on the support of ``probs``, pooling bins with expected count < 5."""
    assert counts[probs == 0].sum() == 0, "drew a partner with probability 0"
    total = counts.sum()
    order = np.argsort(probs)
    obs, exp = [], []
    acc_o = acc_e = 0.0
    for j in order:
        if probs[j] == 0:
            continue
        acc_o += counts[j]
        acc_e += probs[j] * total
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0:  # leftover goes into the last bin
        if exp:
            obs[-1] += acc_o
            exp[-1] += acc_e
        else:
            obs.append(acc_o)
            exp.append(acc_e)
    if len(exp) < 2:
        return 1.0
    obs, exp = np.asarray(obs), np.asarray(exp)
    exp = exp * obs.sum() / exp.sum()
    return float(chisquare(obs, exp).pvalue)


def draw_counts(y: np.ndarray, anchor: int, sigma: float, kernel: str, seed: int = 0,
                block_size: int = 1024) -> np.ndarray:
    y_all = torch.tensor(y, dtype=torch.float32)
    index = torch.full((DRAWS,), anchor, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    partners = sample_partners(index, y_all, sigma, kernel, generator=g, block_size=block_size)
    assert partners.shape == (DRAWS,) and partners.dtype == torch.long
    return np.bincount(partners.numpy(), minlength=len(y))


@pytest.mark.parametrize("labels", ["1d", "2d"])
@pytest.mark.parametrize("kernel,sigma", [("gaussian", 0.7), ("gaussian", 1.5), ("tophat", 0.95), ("tophat", 1.25)])
@pytest.mark.parametrize("anchor", [0, 3, 7])
def test_chisquare_matches_closed_form(labels, kernel, sigma, anchor):
    y = Y1 if labels == "1d" else Y2
    probs = closed_form(y, anchor, sigma, kernel)
    counts = draw_counts(y, anchor, sigma, kernel, seed=1000 + anchor)
    assert gof_pvalue(counts, probs) > 1e-3
    # the module's own probability row agrees with the closed form too
    row = partner_probs(torch.tensor(y[anchor:anchor + 1], dtype=torch.float32),
                        torch.tensor(y, dtype=torch.float32), sigma, kernel)
    np.testing.assert_allclose(row[0].numpy(), probs, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
@pytest.mark.parametrize("y", [Y1, Y2], ids=["1d", "2d"])
def test_probabilities_rows_sum_to_one(kernel, y):
    P = full_matrix(torch.tensor(y, dtype=torch.float32), 1.0, kernel)
    assert P.shape == (8, 8) and P.dtype == torch.float32
    torch.testing.assert_close(P.sum(dim=1), torch.ones(8), atol=1e-6, rtol=0)
    assert bool((P.diagonal() > 0).all())  # self-pairs always possible


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
@pytest.mark.parametrize("y", [Y1, Y2], ids=["1d", "2d"])
def test_tiny_sigma_pairs_with_self(kernel, y):
    y_all = torch.tensor(y, dtype=torch.float32)
    index = torch.arange(8).repeat(500)
    g = torch.Generator().manual_seed(0)
    partners = sample_partners(index, y_all, 1e-4, kernel, generator=g, block_size=64)
    assert torch.equal(partners, index)


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
@pytest.mark.parametrize("y", [Y1, Y2], ids=["1d", "2d"])
def test_huge_sigma_is_uniform(kernel, y):
    for anchor in (0, 5):
        counts = draw_counts(y, anchor, 1e6, kernel, seed=7 + anchor)
        assert chisquare(counts).pvalue > 1e-3  # default expected: uniform
        np.testing.assert_allclose(
            full_matrix(torch.tensor(y, dtype=torch.float32), 1e6, kernel).numpy(), np.full((8, 8), 1 / 8), atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
@pytest.mark.parametrize("y", [Y1, Y2], ids=["1d", "2d"])
def test_blockwise_equals_full(kernel, y):
    y_all = torch.tensor(y, dtype=torch.float32)
    index = torch.tensor([5, 0, 0, 7, 3, 2, 6, 1, 4, 4, 7])
    full = full_matrix(y_all, 0.95, kernel)[index]
    blocks = list(iter_partner_probs(index, y_all, 0.95, kernel, block_size=3))
    assert [s for s, _ in blocks] == [0, 3, 6, 9]
    assert max(p.shape[0] for _, p in blocks) <= 3
    blockwise = torch.cat([p for _, p in blocks])
    torch.testing.assert_close(blockwise, full, atol=1e-6, rtol=0)
    one_block = torch.cat([p for _, p in iter_partner_probs(index, y_all, 0.95, kernel, block_size=len(y))])
    torch.testing.assert_close(one_block[: len(index)], full, atol=1e-6, rtol=0)


def test_kernel_weights_are_unnormalised_kernel():
    y_all = torch.tensor(Y2, dtype=torch.float32)
    w = kernel_weights(y_all, y_all, 0.95, "gaussian")
    d2 = ((Y2[:, None, :] - Y2[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * 0.95 ** 2))
    # each row is the kernel up to a per-row positive constant (the row max of the log-kernel was removed)
    np.testing.assert_allclose(w.numpy() / w.numpy()[:, :1], k / k[:, :1], rtol=1e-5)
    np.testing.assert_allclose(w.max(dim=1).values.numpy(), 1.0)
    t = kernel_weights(y_all, y_all, 0.95, "tophat")
    np.testing.assert_array_equal(t.numpy(), (np.sqrt(d2) < 0.95).astype(np.float32))
    # 1-D rows against 1-D labels give (B, N)
    assert kernel_weights(torch.tensor(Y1[:3]), torch.tensor(Y1), 1.0, "gaussian").shape == (3, 8)


def test_gaussian_tiny_sigma_rows_outside_y_all_stay_finite():
    # a query far from every label: a naive exp would underflow the whole row to 0
    P = partner_probs(torch.tensor([[100.0]]), torch.tensor(Y1, dtype=torch.float32), 1e-3, "gaussian")
    assert bool(torch.isfinite(P).all())
    assert int(P.argmax()) == 7 and float(P[0, 7]) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["random", "cmixup"])
def test_same_seed_is_reproducible(mode):
    y_all = torch.tensor(Y2, dtype=torch.float32)
    index = torch.randint(0, 8, (3000,), generator=torch.Generator().manual_seed(3))
    sampler = PartnerSampler(y_all, mode=mode, sigma=0.8, kernel="gaussian", block_size=256)
    a = sampler(index, torch.Generator().manual_seed(42))
    b = sampler(index, torch.Generator().manual_seed(42))
    c = sampler(index, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == index.shape and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 8
    if mode == "cmixup":
        d = sample_partners(index, y_all, 0.8, "gaussian", generator=torch.Generator().manual_seed(42),
                            block_size=256)
        assert torch.equal(a, d)


def test_random_mode_is_uniform():
    sampler = PartnerSampler(torch.tensor(Y1), mode="random")
    partners = sampler(torch.zeros(DRAWS, dtype=torch.long), torch.Generator().manual_seed(5))
    counts = np.bincount(partners.numpy(), minlength=8)
    assert chisquare(counts).pvalue > 1e-3


def test_sampler_cmixup_matches_closed_form():
    sampler = PartnerSampler(torch.tensor(Y1, dtype=torch.float32), mode="cmixup", sigma=0.6, kernel="gaussian",
                             block_size=500)
    partners = sampler(torch.full((DRAWS,), 2, dtype=torch.long), torch.Generator().manual_seed(11))
    counts = np.bincount(partners.numpy(), minlength=8)
    assert gof_pvalue(counts, closed_form(Y1, 2, 0.6, "gaussian")) > 1e-3


@pytest.mark.parametrize("kwargs,name", [
    (dict(mode="cmixup", sigma=0.0), "sigma"),
    (dict(mode="cmixup", sigma=-1.0), "sigma"),
    (dict(mode="cmixup", sigma=float("nan")), "sigma"),
    (dict(mode="cmixup", kernel="epanechnikov"), "kernel"),
    (dict(mode="knn"), "mode"),
    (dict(mode="cmixup", block_size=0), "block_size"),
])
def test_bad_options_raise_plugin_error(kwargs, name):
    with pytest.raises(PluginError, match=name):
        PartnerSampler(torch.tensor(Y1), **kwargs)


def test_bad_options_in_functions_raise_plugin_error():
    y = torch.tensor(Y1)
    with pytest.raises(PluginError, match="sigma"):
        partner_probs(y, y, 0.0)
    with pytest.raises(PluginError, match="kernel"):
        kernel_weights(y, y, 1.0, "box")
    with pytest.raises(PluginError, match="kernel"):
        sample_partners(torch.tensor([0]), y, 1.0, kernel="box")
    with pytest.raises(PluginError, match="block_size"):
        sample_partners(torch.tensor([0]), y, 1.0, block_size=0)
