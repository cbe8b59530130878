"""SelMix ``protocol: reference`` against ports of the reference code (val-iisc/SelMix): the pair
distribution its joint sampler draws from, the logit-change-rate gain, BatchNorm on batch statistics."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mixcli.api import PluginError
from mixcli_plugins.methods.selmix import SelMix, gain_matrix, reference_pair_distribution

from test_selmix import FT, PRE


def reference_sampler_joint(G, T):
    """P as MetricOptimizer.SamplingDistribution builds it, then the joint law of FastJointSampler's
    weighted draws: y1 with weight p_y1, y2 | y1 with weight p_y2_given_y1 (WeightedRandomSampler
    normalises the weights)."""
    k = G.shape[0]
    flat = (G / T).ravel()
    sm = np.exp(flat - flat.max()) / np.exp(flat - flat.max()).sum()
    P = sm.reshape(k, k) * (G > 0).astype(float)
    P = (P + 1e-8) / np.sum(P + 1e-8)
    eps = 1.0 / k ** 3
    p_y1 = np.sum(P + eps, axis=1)
    p_y2_given_y1 = ((P.T + eps) / (p_y1 + eps)).T
    joint = np.zeros((k, k))
    for i in range(k):
        joint[i] = p_y1[i] / p_y1.sum() * p_y2_given_y1[i] / p_y2_given_y1[i].sum()
    return joint


@pytest.mark.parametrize("k", [4, 10])
def test_reference_pair_distribution_is_the_reference_samplers_law(k):
    rng = np.random.default_rng(k)
    G = rng.normal(size=(k, k)) * 0.05
    P = reference_pair_distribution(G, 0.1)
    np.testing.assert_allclose(P, reference_sampler_joint(G, 0.1), rtol=1e-10, atol=1e-15)
    # every pair keeps at least its share of 1/(K + 1) uniform mass (9.1% in all at K = 10)
    assert P.min() >= (1 / (k + 1)) / k ** 2 * (1 - 1e-9)
    # pairs of no gain get only that uniform share (plus the 1e-8 floor)
    assert P[G <= 0].sum() == pytest.approx((G <= 0).sum() / k ** 2 / (k + 1), rel=1e-4)


def reference_gain(mu, W, b, D, lambda_min):
    """The reference's logits[i, j] = sum_{q,l} D[q, l] LCR[i, j, q, l] with its LogitChangeRate loops."""
    k = mu.shape[0]
    lbar = (lambda_min + 1.0) / 2.0
    mix = np.array([[lbar * mu[i] + (1 - lbar) * mu[j] for j in range(k)] for i in range(k)])
    z = mix @ W.T + b
    pred = np.exp(z - z.max(-1, keepdims=True))
    pred /= pred.sum(-1, keepdims=True)
    dot = np.zeros((k, k, k))
    for q in range(k):
        dot[:, :, q] = np.sum(mix * mu[q], axis=-1)
    LCR = np.zeros((k, k, k, k))
    for q, l in itertools.product(range(k), repeat=2):
        LCR[:, :, q, l] = -1 * dot[:, :, q] * pred[:, :, l]
    for i, q in itertools.product(range(k), repeat=2):
        LCR[i, :, q, i] += dot[i, i, q]
    return np.array([[np.sum(D * LCR[i, j]) for j in range(k)] for i in range(k)])


def test_reference_gain_uses_the_class_mean_term():
    rng = np.random.default_rng(0)
    k, d = 5, 7
    mu, W, b, D = rng.normal(size=(k, d)), rng.normal(size=(k, d)), rng.normal(size=k), rng.normal(size=(k, k))
    for lam_min in (0.6, 0.8):
        lbar = (lam_min + 1) / 2
        got = gain_matrix(mu, mu @ W.T + b, D, lbar, class_mean_term=True)
        np.testing.assert_allclose(got, reference_gain(mu, W, b, D, lam_min), rtol=1e-9, atol=1e-9)
        # the paper's protocol differs (mixed centroid in the positive term)
        assert not np.allclose(gain_matrix(mu, mu @ W.T + b, D, lbar), got)


def test_protocol_option_is_checked():
    with pytest.raises(PluginError, match="protocol must be one of paper, reference"):
        SelMix(protocol="official")


def test_reference_protocol_run_trains_batchnorm_on_batch_statistics(cli, write, tmp_path):
    write(PRE.replace("OUT", str(tmp_path / "pre")), "pre.yaml")
    ft = FT.replace("refresh: 2}", "refresh: 2, protocol: reference}").replace("freeze_bn: true", "freeze_bn: false")
    code, text = cli("run", write(ft, "ft.yaml"), "--out", tmp_path / "ft", "--device", "cpu")
    assert code == 0, text
    parent_dir = next((tmp_path / "pre" / "jobs").iterdir())
    before = torch.load(parent_dir / "checkpoint.pt", weights_only=True)["model"]
    rid = pd.read_parquet(tmp_path / "ft" / "runs")["run_id"].iloc[0]
    after = torch.load(tmp_path / "ft" / "jobs" / rid / "checkpoint.pt", weights_only=True)["model"]
    bn = [k for k in before if "running_mean" in k or "running_var" in k]
    assert bn, "the cnn model has BatchNorm layers"
    for k in bn:  # running statistics frozen (momentum 0) ...
        torch.testing.assert_close(after[k], before[k])
    for k in (k.replace("running_mean", "weight") for k in bn if "running_mean" in k):  # ... affine frozen
        torch.testing.assert_close(after[k], before[k])
    assert any(not torch.equal(after[k], before[k]) for k in before if "classifier" in k)  # the rest trains
    # with BatchNorm kept in eval mode (freeze_bn: true) the reference protocol is refused, clearly
    ft = ft.replace("freeze_bn: false", "freeze_bn: true")
    code, text = cli("run", write(ft, "ft2.yaml"), "--out", tmp_path / "ft2", "--device", "cpu")
    assert code != 0 and "set train.freeze_bn: false" in text


def test_reference_protocol_normalises_with_batch_statistics():
    """In training mode with momentum 0, a BatchNorm layer normalises with the batch's own mean and
    variance and leaves its running statistics as they were."""
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(5.0)
    bn.momentum = 0.0
    x = torch.randn(16, 3) * 2 + 1
    y = bn.train()(x)
    torch.testing.assert_close(y, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps))
    assert torch.all(bn.running_mean == 5.0)
