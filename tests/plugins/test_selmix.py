"""SelMix (plugins/methods/selmix.py) and fine-tuning (mixcli/config/init_from.py): objectives, gains, sampler, init_from."""
from __future__ import annotations

import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import yaml

from mixcli.training.optim import param_groups
from mixcli.config.jobs import expand
from mixcli.metrics import classification_metrics
from mixcli.config.spec import load_experiment
from mixcli_plugins.methods.selmix import (OBJECTIVES, SelMix, coverage_multipliers, gain_matrix, gain_rates,
                                           head_mask, next_multipliers, objective_value, pair_distribution,
                                           recall_weights, sample_pairs)

# a hand-built 4-class confusion (counts; rows = true class, 10 examples each), joint-normalised below
COUNTS = np.array([[9, 1, 0, 0],
                   [2, 7, 1, 0],
                   [0, 3, 6, 1],
                   [1, 1, 3, 5]], dtype=float)


def _logits_for(counts):
    """Labels and one-hot-ish logits whose argmax reproduces a confusion count matrix."""
    labels, preds = [], []
    for i, j in itertools.product(range(len(counts)), repeat=2):
        labels += [i] * int(counts[i, j])
        preds += [j] * int(counts[i, j])
    return np.eye(len(counts))[preds] * 5.0, np.array(labels)


# ------------------------------------------------------------------------------------------- objectives
def test_objectives_match_hand_computation_and_metrics():
    C = COUNTS / COUNTS.sum()
    r = [0.9, 0.7, 0.6, 0.5]                     # recalls by hand: diagonal / 10
    head = np.array([True, True, True, False])  # class 3 is the rarest in training
    expected = {
        "mean_recall": (0.9 + 0.7 + 0.6 + 0.5) / 4,
        "min_recall": 0.5,
        "min_ht_recall": min((0.9 + 0.7 + 0.6) / 3, 0.5),
        "gmean": (0.9 * 0.7 * 0.6 * 0.5) ** 0.25,
        "hmean": 4 / (1 / 0.9 + 1 / 0.7 + 1 / 0.6 + 1 / 0.5),
        "mean_recall_min_coverage": 0.675,
    }
    for name in OBJECTIVES:
        assert objective_value(C, name, head) == pytest.approx(expected[name], abs=1e-12), name
    # the same numbers from mixcli.metrics on logits with this confusion
    logits, labels = _logits_for(COUNTS)
    m = classification_metrics(logits, labels, class_counts=[50, 40, 30, 5])
    assert m["per_class_recall"] == pytest.approx(r)
    for ours, theirs in (("mean_recall", "mean_recall"), ("min_recall", "worst_class_recall"),
                         ("min_ht_recall", "min_ht_recall"), ("gmean", "gmean"), ("hmean", "hmean")):
        assert objective_value(C, ours, head) == pytest.approx(m[theirs], abs=1e-12)
    assert m["min_coverage"] == pytest.approx(C.sum(0).min())
    assert (head_mask([50, 40, 30, 5]) == head).all()
    assert head_mask([5, 50, 40, 30]).tolist() == [False, True, True, True]


def test_multipliers():
    r = np.array([0.9, 0.7, 0.6, 0.5])
    soft = np.exp(-50 * r) / np.exp(-50 * r).sum()
    assert next_multipliers(np.full(4, 0.25), r, eta=50, beta=0.0) == pytest.approx(soft)
    prev = np.array([0.1, 0.2, 0.3, 0.4])
    m = prev ** 0.5 * np.exp(-50 * r)
    assert next_multipliers(prev, r, eta=50, beta=0.5) == pytest.approx(m / m.sum())
    C = COUNTS / COUNTS.sum()
    cov = C.sum(0)                               # 0.3, 0.3, 0.25, 0.15 against alpha / K = 0.2375
    lam = coverage_multipliers(C, alpha=0.95, tau=0.1, lambda_max=100)
    assert lam == pytest.approx(np.maximum(100 * (1 - np.exp((cov - 0.95 / 4) / 0.1)), 0))
    assert lam[:3].tolist() == [0, 0, 0] and lam[3] == pytest.approx(100 * (1 - np.exp(-0.875)))


# ------------------------------------------------------------------------------------------ gain rates
def _soft_psi(A, pi, objective, mult, head, cov_mult):
    """psi of the soft confusion C_ql = pi_q softmax(A_q)_l, multipliers held fixed (the linearised objective)."""
    s = np.exp(A - A.max(1, keepdims=True))
    C = pi[:, None] * s / s.sum(1, keepdims=True)
    r = np.diag(C) / C.sum(1)
    if objective == "min_recall":
        return float((mult * r).sum())
    if objective == "min_ht_recall":
        return float(mult[0] * r[head].mean() + mult[1] * r[~head].mean())
    if objective == "mean_recall_min_coverage":
        return float((r.mean() + (cov_mult * C.sum(0)).sum()) / (cov_mult.max() + 1))
    return objective_value(C, objective, head)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gain_rates_are_the_derivative_of_the_objective(objective):
    rng = np.random.default_rng(1)
    k = 5
    A = rng.normal(size=(k, k)) + 2 * np.eye(k)
    pi = np.full(k, 1 / k)
    s = np.exp(A - A.max(1, keepdims=True))
    C = pi[:, None] * s / s.sum(1, keepdims=True)
    head = np.array([True] * 4 + [False])
    mult = {"min_recall": rng.dirichlet(np.ones(k)), "min_ht_recall": np.array([0.3, 0.7])}.get(objective)
    cov_mult = coverage_multipliers(C, 0.95, 0.1, 100) if objective == "mean_recall_min_coverage" else None
    D = gain_rates(C, recall_weights(C, objective, mult, head), cov_mult)
    num = np.zeros_like(D)
    eps = 1e-6
    for q, l in itertools.product(range(k), repeat=2):
        Ap, Am = A.copy(), A.copy()
        Ap[q, l] += eps
        Am[q, l] -= eps
        num[q, l] = (_soft_psi(Ap, pi, objective, mult, head, cov_mult) -
                     _soft_psi(Am, pi, objective, mult, head, cov_mult)) / (2 * eps)
    assert np.abs(D - num).max() < 1e-7 * max(1.0, np.abs(num).max())


def test_gain_rates_reduce_to_the_papers_closed_forms_on_a_balanced_confusion():
    C = COUNTS / COUNTS.sum()                    # rows sum to 1/K
    k, d = 4, np.diag(COUNTS / COUNTS.sum())
    D = gain_rates(C, recall_weights(C, "mean_recall"))
    paper = -k * d[:, None] * C
    paper[np.diag_indices(k)] = d - k * d ** 2
    assert D == pytest.approx(paper, abs=1e-15)
    # G-mean: dpsi/dC_ij = psi (1/K)(delta_ij / C_ii - 1 / pi_i), chained through dC_qj/dA_ql = C_qj (delta_jl - K C_ql)
    psi, pi = objective_value(C, "gmean"), C.sum(1)
    M = psi / k * (np.diag(1 / d) - (1 / pi)[:, None])
    chain = np.einsum("qj,qj,jl->ql", M, C, np.eye(k)) - k * C * (M * C).sum(1, keepdims=True)
    assert gain_rates(C, recall_weights(C, "gmean")) == pytest.approx(chain, abs=1e-14)
    # H-mean: dpsi/dC_ij = -(psi^2/K)(1/C_ii - delta_ij pi_i / C_ii^2)
    psi = objective_value(C, "hmean")
    M = -(psi ** 2 / k) * ((1 / d)[:, None] - np.diag(pi / d ** 2))
    chain = M * C - k * C * (M * C).sum(1, keepdims=True)
    assert gain_rates(C, recall_weights(C, "hmean")) == pytest.approx(chain, abs=1e-14)


# ------------------------------------------------------------------------------------------ gain matrix
def test_vectorised_gain_equals_the_loop_over_i_j_q_l():
    rng = np.random.default_rng(0)
    k, d, lbar = 5, 7, 0.8
    mu, W, b = rng.normal(size=(k, d)), rng.normal(size=(k, d)), rng.normal(size=k)
    C = rng.random((k, k))
    C /= C.sum()
    D = gain_rates(C, recall_weights(C, "gmean"))
    G = gain_matrix(mu, mu @ W.T + b, D, lbar)
    loop = np.zeros((k, k))
    for i, j in itertools.product(range(k), repeat=2):
        z = lbar * mu[i] + (1 - lbar) * mu[j]
        s = W @ z + b
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        for q, l in itertools.product(range(k), repeat=2):
            loop[i, j] += D[q, l] * ((l == i) - p[l]) * (z @ mu[q])   # D[q,l] * LCR[i,j,q,l]
    assert G == pytest.approx(loop, abs=1e-12)


def test_gain_sign_predicts_the_change_in_mean_recall_after_one_sgd_step():
    """Toy linear model; the validation set is the class prototypes with soft predictions, so mean recall
    is smooth. One SGD step on CE(W z_ij + b, i) (W only) changes it by about lr * G_ij."""
    rng = np.random.default_rng(3)
    k, d, lbar, lr = 4, 6, 0.8, 1e-4
    mu = rng.normal(size=(k, d)) + 2 * np.eye(k, d)
    W0 = rng.normal(scale=0.5, size=(k, d))
    b = rng.normal(scale=0.3, size=k)

    def mean_recall(W):
        A = mu @ W.T + b
        s = np.exp(A - A.max(1, keepdims=True))
        return float(np.diag(s / s.sum(1, keepdims=True)).mean())

    A = mu @ W0.T + b
    s = np.exp(A - A.max(1, keepdims=True))
    C = s / s.sum(1, keepdims=True) / k
    G = gain_matrix(mu, A, gain_rates(C, recall_weights(C, "mean_recall")), lbar)
    assert (G > 0).any() and (G < 0).any()
    base = mean_recall(W0)
    for i, j in itertools.product(range(k), repeat=2):
        W = torch.tensor(W0, requires_grad=True)
        z = torch.tensor(lbar * mu[i] + (1 - lbar) * mu[j])
        loss = torch.nn.functional.cross_entropy((W @ z + torch.tensor(b))[None], torch.tensor([i]))
        loss.backward()
        change = mean_recall((W - lr * W.grad).detach().numpy()) - base
        assert np.sign(change) == np.sign(G[i, j]), (i, j, change, G[i, j])
        assert change / lr == pytest.approx(G[i, j], rel=1e-2, abs=1e-6)


# ---------------------------------------------------------------------------------------------- sampler
def test_pair_distribution_masks_non_positive_gains():
    G = np.array([[0.3, -0.1, 0.0], [0.2, 0.05, -2.0], [1.0, -0.5, 0.4]])
    P = pair_distribution(G, temperature=0.1)
    pos = G > 0
    e = np.exp(G[pos] / 0.1)
    assert P[pos] == pytest.approx(e / e.sum())
    assert (P[~pos] == 0).all() and P.sum() == pytest.approx(1.0)
    assert (pair_distribution(-np.abs(G), 0.1) == 1 / 9).all()   # no positive gain: uniform


def test_sampled_pairs_follow_the_distribution_and_never_hit_masked_pairs():
    rng = np.random.default_rng(0)
    k = 6
    G = rng.normal(scale=0.1, size=(k, k))
    P = pair_distribution(G, temperature=0.1)
    masked = P == 0
    assert masked.sum() >= 8
    n = 200_000
    i, j = sample_pairs(P, n, np.random.default_rng(1))
    counts = np.zeros((k, k))
    np.add.at(counts, (i, j), 1)
    assert counts[masked].sum() == 0
    obs, exp = counts[~masked], P[~masked] * n
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert scipy.stats.chi2.sf(chi2, df=len(obs) - 1) > 1e-3
    one = np.zeros((k, k))
    one[2, 4] = 1.0
    i, j = sample_pairs(one, 1000, rng)
    assert (i == 2).all() and (j == 4).all()


def test_bad_options():
    from mixcli.api import PluginError
    with pytest.raises(PluginError, match="objective must be one of"):
        SelMix(objective="accuracy")
    with pytest.raises(PluginError, match="refresh"):
        SelMix(refresh=0)
    with pytest.raises(PluginError, match="lam_min"):
        SelMix(lam_min=1.5)


# ------------------------------------------------------------------------------------- fine-tuning runs
PRE = """\
name: pre
dataset: {name: digits, imbalance: 10}
model: {name: cnn, width: 4}
method: erm
train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
seeds: [0]
out: OUT
"""

FT = """\
name: ft
dataset: {name: digits, imbalance: 10}
model: {name: cnn, width: 4}
init_from: {experiment: pre.yaml, where: {method: erm}}
method: {name: selmix, objective: min_recall, refresh: 2}
train:
  iterations: 7
  iterations_per_epoch: 3
  batch_size: 32
  freeze_bn: true
  optimizer: {name: sgd, lr: 1.0e-3, classifier_lr: 1.0e-2}
seeds: [0]
"""


def test_selmix_fine_tune_end_to_end(cli, write, tmp_path):
    write(PRE.replace("OUT", str(tmp_path / "pre")), "pre.yaml")
    p = write(FT, "ft.yaml")
    code, text = cli("run", p, "--out", tmp_path / "ft", "--device", "cpu")
    assert code == 0, text
    parent = pd.read_parquet(tmp_path / "pre" / "runs")
    child = pd.read_parquet(tmp_path / "ft" / "runs")
    assert parent["status"].tolist() == ["finished"] and child["status"].tolist() == ["finished"]
    cfg = json.loads(child["config"].iloc[0])
    assert cfg["init_from"]["parent"] == parent["run_id"].iloc[0] and cfg["train"]["epochs"] is None
    epochs = pd.read_parquet(tmp_path / "ft" / "epochs")
    assert epochs["epoch"].tolist() == [1, 2, 3]     # 7 iterations in epochs of 3, 3, 1
    run_dir = tmp_path / "ft" / "jobs" / child["run_id"].iloc[0]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 7
    gains = sorted(p.name for p in (run_dir / "selmix").glob("*.npz"))
    assert gains == [f"gains_{s:07d}.npz" for s in (0, 2, 4, 6)]
    with np.load(run_dir / "selmix" / gains[-1]) as z:
        P, G = z["P"], z["G"]
        assert P.shape == (10, 10) and P.sum() == pytest.approx(1.0)
        assert ((P == 0) == (G <= 0)).all() or (G <= 0).all()
    code, text = cli("inspect", run_dir, "--png", tmp_path / "g.png", "--top", "3")
    assert code == 0, text
    assert "step 6" in text and (tmp_path / "g.png").stat().st_size > 1000
    code, text = cli("inspect", tmp_path, "--step", "1")
    assert code == 2 and "not a run directory" in text
    code, text = cli("inspect", next((tmp_path / "pre" / "jobs").iterdir()))  # the erm parent
    assert code == 2 and "records nothing to inspect" in text
    # running again skips both the parent and the fine-tune
    code, text = cli("run", p, "--out", tmp_path / "ft", "--device", "cpu")
    assert code == 0 and text.count("already finished, skipped") == 2


def test_init_from_loads_the_parent_weights_and_freezes_batchnorm(cli, write, tmp_path):
    write(PRE.replace("OUT", str(tmp_path / "pre")), "pre.yaml")
    assert cli("run", tmp_path / "pre.yaml", "--device", "cpu")[0] == 0
    parent_dir = next((tmp_path / "pre" / "jobs").iterdir())
    ft = FT.replace("{experiment: pre.yaml, where: {method: erm}}", str(parent_dir)).replace(
        "{name: selmix, objective: min_recall, refresh: 2}", "erm").replace("iterations: 7", "iterations: 1") \
        .replace("lr: 1.0e-3, classifier_lr: 1.0e-2", "lr: 1.0e-3, classifier_lr: 1.0e-2, momentum: 0.0")
    code, text = cli("run", write(ft, "ft.yaml"), "--out", tmp_path / "ft", "--device", "cpu")
    assert code == 0, text
    before = torch.load(parent_dir / "checkpoint.pt", weights_only=True)["model"]
    rid = pd.read_parquet(tmp_path / "ft" / "runs")["run_id"].iloc[0]
    after = torch.load(tmp_path / "ft" / "jobs" / rid / "checkpoint.pt", weights_only=True)["model"]
    for k, v in before.items():
        if re.match(r"stages\.\d+\.1\.", k):           # cnn blocks: conv, BatchNorm, ReLU
            assert torch.equal(v, after[k]), k          # BatchNorm statistics and affine parameters frozen
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith(("stages", "classifier")) for k in changed)
    assert max((before[k] - after[k]).abs().max().item() for k in changed) < 0.05   # one small step away


def test_param_groups_and_iteration_options(write):
    from mixcli_plugins.models.cnn import CNN
    model = CNN((1, 8, 8), 10, width=4)
    groups = param_groups(model, {"lr": 0.1, "classifier_lr": 1.0})
    assert [g["lr"] for g in groups] == [0.1, 1.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.classifier.parameters()}
    assert len(param_groups(model, {"lr": 0.1, "classifier_lr": None})) == len(list(model.parameters()))
    from mixcli.errors import MixcliError
    base = "name: x\ndataset: digits\nmodel: mlp\n"
    with pytest.raises(MixcliError, match="either train.epochs or train.iterations"):
        expand(load_experiment(write(base + "train: {epochs: 3, iterations: 10}\n")))
    with pytest.raises(MixcliError, match="only meaningful with train.iterations"):
        expand(load_experiment(write(base + "train: {iterations_per_epoch: 10}\n")))
    with pytest.raises(MixcliError, match="init_from.wher"):
        expand(load_experiment(write(base + "init_from: {experiment: a.yaml, wher: {}}\n")))


def test_init_from_mismatch_and_missing_runs_fail_clearly(cli, write, tmp_path):
    write(PRE.replace("OUT", str(tmp_path / "pre")), "pre.yaml")
    assert cli("run", tmp_path / "pre.yaml", "--device", "cpu")[0] == 0
    parent_dir = next((tmp_path / "pre" / "jobs").iterdir())
    ft = FT.replace("{experiment: pre.yaml, where: {method: erm}}", str(parent_dir))
    code, text = cli("run", write(ft.replace("width: 4", "width: 8"), "ft.yaml"), "--out", tmp_path / "ft")
    text = " ".join(text.split())
    assert code == 2 and "trained model 'cnn' (width=4)" in text and "uses model 'cnn' (width=8)" in text
    code, text = cli("run", write(ft.replace("cnn, width: 4", "mlp"), "ft.yaml"), "--out", tmp_path / "ft")
    assert code == 2 and "uses model 'mlp'" in " ".join(text.split())
    other = tmp_path / "other" / parent_dir.name
    shutil.copytree(parent_dir, other)
    conf = yaml.safe_load((other / "config.yaml").read_text())
    conf["dataset"] = {"name": "mnist"}
    (other / "config.yaml").write_text(yaml.safe_dump(conf))
    code, text = cli("run", write(ft.replace(str(parent_dir), str(other)), "ft.yaml"), "--out", tmp_path / "ft")
    text = " ".join(text.split())
    assert code == 2 and "trained on dataset 'mnist'" in text and "uses dataset 'digits'" in text
    code, text = cli("run", write(ft.replace(str(parent_dir), "no-such-run"), "ft.yaml"), "--out", tmp_path / "ft")
    assert code == 2 and "'no-such-run' is neither a run id" in " ".join(text.split())
    code, text = cli("run", write(FT.replace("where: {method: erm}", "where: {method: mixup}"), "ft.yaml"))
    assert code == 2 and "0 jobs of pre.yaml match" in " ".join(text.split())
    # a run id under the experiment's own output directory works, and different parents give different ids
    (tmp_path / "ft2" / "jobs").mkdir(parents=True)
    shutil.copytree(parent_dir, tmp_path / "ft2" / "jobs" / parent_dir.name)
    by_id = expand(load_experiment(write(ft.replace(str(parent_dir), parent_dir.name), "ft.yaml"),
                                   [f"out={tmp_path / 'ft2'}"]))
    by_path = expand(load_experiment(write(ft, "ft.yaml")))
    assert by_id[0].config["init_from"]["parent"] == parent_dir.name
    assert by_id[0].run_id == by_path[0].run_id      # the same parent, referred to by id or by path
    shutil.copytree(parent_dir, tmp_path / "renamed" / "jobs" / "other-parent")
    renamed = expand(load_experiment(write(ft.replace(str(parent_dir), str(tmp_path / "renamed" / "jobs" /
                                                                            "other-parent")), "ft.yaml")))
    assert renamed[0].run_id != by_path[0].run_id


def test_selmix_resume_matches_an_uninterrupted_run(cli, write, tmp_path, monkeypatch):
    from mixcli.training import engine
    write(PRE.replace("OUT", str(tmp_path / "pre")), "pre.yaml")
    p = write(FT, "ft.yaml")
    assert cli("run", p, "--out", tmp_path / "full", "--device", "cpu")[0] == 0
    real, calls = engine.evaluate, {"n": 0}

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # two splits per epoch
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate", crash_in_epoch_2)
    assert cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")[0] == 130
    monkeypatch.setattr(engine, "evaluate", real)
    assert cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")[0] == 0
    full = pd.read_parquet(tmp_path / "full" / "epochs").drop(columns="time_s")
    cut = pd.read_parquet(tmp_path / "cut" / "epochs").drop(columns="time_s")
    pd.testing.assert_frame_equal(full, cut)
