"""`mixcli compare --against`, round 3: evaluator metrics, Holm-adjusted p-values, bootstrap intervals over
seeds, P(beat the baseline on a paired seed) and the seeds 80% power needs, each against scipy or an
independent computation (a hand-run step-down procedure, a Monte Carlo power estimate, G*Power's values)."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixcli.results.stats import BOOT_RESAMPLES, holm, seeds_for_power, t_power
from mixcli.results.store import Store
from test_compare_stats import RUN_NUMBER


def make_runs(out, rows):
    """rows: (method, seed, {metric: value}) -> a results directory of classification runs."""
    store = Store(out)
    for method, seed, metrics in rows:
        cfg = {"seed": seed, "method": {"name": method}, "dataset": {"name": "digits"}}
        rid = f"rob-{method}-{seed}-{next(RUN_NUMBER)}"
        store.write_run({"run_id": rid, "experiment": "rob", "method": method, "dataset": "digits",
                         "model": "cnn", "loss": "soft_ce", "task": "classification", "seed": seed,
                         "status": "finished", "config": json.dumps(cfg), "selection": "final", "epochs": 1})
        store.write_epochs(rid, [{"epoch": 1, "train_loss": 0.0, **{f"test_{k}": v for k, v in metrics.items()}}])
    return out


def vs(cli, out, metric, *args):
    code, text = cli("compare", out, "--metric", metric, "--format", "json", "--against", "erm", *args)
    assert code == 0, text
    return {g["method"]: g[metric]["vs_baseline"] for g in json.loads(text)["groups"]}


RNG = np.random.default_rng(3)
FGSM = {m: RNG.normal(mu, 0.02, 5) for m, mu in (("erm", 0.80), ("mixup", 0.83), ("cutmix", 0.81),
                                                 ("manifold", 0.86), ("alignmix", 0.80))}
ECE = {m: RNG.normal(mu, 0.005, 5) for m, mu in (("erm", 0.02), ("mixup", 0.09), ("cutmix", 0.10),
                                                 ("manifold", 0.08), ("alignmix", 0.02))}


@pytest.fixture
def robust(tmp_path):
    return make_runs(tmp_path / "r", [(m, s, {"fgsm_accuracy": FGSM[m][s], "ts_ece": ECE[m][s]})
                                      for m in FGSM for s in range(5)])


def test_against_works_on_evaluator_metrics(cli, robust):
    for metric, vals, higher in (("fgsm_accuracy", FGSM, True), ("ts_ece", ECE, False)):
        rows = vs(cli, robust, metric)
        assert rows["erm"] is None
        for m in ("mixup", "cutmix", "manifold", "alignmix"):
            r, d = rows[m], vals[m] - vals["erm"]
            assert r["t_p"] == pytest.approx(stats.ttest_rel(vals[m], vals["erm"]).pvalue)
            better = d > 0 if higher else d < 0
            assert r["wins"] == int(better.sum())
    code, text = cli("compare", robust, "--metric", "fgsm_accuracy", "--against", "erm")
    assert code == 0 and "Holm" in text and "seeds for 80% power" in text, text
    code, text = cli("compare", robust, "--metric", "ts_ece", "--against", "erm", "--format", "csv")
    df = pd.read_csv(io.StringIO(text)).set_index("method")
    assert code == 0 and df.loc["mixup", "ts_ece_p_beat"] < 0.01  # mixup's ECE is far worse


def holm_by_procedure(p, alpha):
    """Holm's step-down procedure run directly: the rejected indices at level alpha."""
    order = np.argsort(p, kind="stable")
    rejected = set()
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected.add(int(i))
    return rejected


def test_holm_adjustment_is_the_step_down_procedure():
    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.04]
    adj = holm(p)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.04, 0.5 times 6, 5, 4, 3, 2, 1 -> 0.03, 0.05, 0.12, 0.12,
    # 0.12 (running max), 0.5
    assert adj == pytest.approx([0.05, 0.12, 0.12, 0.03, 0.5, 0.12])
    for alpha in np.linspace(0.001, 0.6, 300):
        assert {i for i, a in enumerate(adj) if a <= alpha} == holm_by_procedure(np.array(p), alpha)
    assert holm([0.3]) == [0.3] and holm([0.6, 0.9]) == [1.0, 1.0]


def test_compare_reports_holm_and_marks_significance_by_it(cli, robust):
    rows = vs(cli, robust, "fgsm_accuracy")
    groups = ["mixup", "cutmix", "manifold", "alignmix"]
    raw = [stats.ttest_rel(FGSM[m], FGSM["erm"]).pvalue for m in groups]
    m_ = len(raw)
    order = np.argsort(raw)
    expect, running = {}, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m_ - k) * raw[i]))
        expect[groups[i]] = running
    for g in groups:
        assert rows[g]["holm_p"] == pytest.approx(expect[g])
        assert rows[g]["significant"] == (expect[g] < 0.05)


def test_bootstrap_interval_matches_scipy(cli, robust):
    rows = vs(cli, robust, "fgsm_accuracy", "--alpha", "0.1")
    for m in ("mixup", "manifold"):
        d = FGSM[m] - FGSM["erm"]
        ref = stats.bootstrap((d,), np.mean, n_resamples=BOOT_RESAMPLES, method="percentile",
                              confidence_level=0.9, rng=np.random.default_rng(0)).confidence_interval
        assert (rows[m]["boot_low"], rows[m]["boot_high"]) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_bootstrap_of_unmatched_seeds_resamples_each_group(cli, tmp_path):
    erm, mix = np.array([0.80, 0.82, 0.79, 0.81]), np.array([0.84, 0.85, 0.83])
    out = make_runs(tmp_path / "r", [("erm", s, {"accuracy": v}) for s, v in enumerate(erm)]
                    + [("mixup", s + 10, {"accuracy": v}) for s, v in enumerate(mix)])
    r = vs(cli, out, "accuracy")["mixup"]
    assert r["test"] == "Welch"
    ref = stats.bootstrap((mix, erm), lambda x, b, axis: x.mean(axis) - b.mean(axis), n_resamples=BOOT_RESAMPLES,
                          method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert (r["boot_low"], r["boot_high"]) == pytest.approx((ref.low, ref.high), rel=1e-12)
    spread = math.sqrt(mix.var(ddof=1) + erm.var(ddof=1))
    assert r["p_beat"] == pytest.approx(stats.norm.cdf((mix.mean() - erm.mean()) / spread))
    pooled = math.sqrt((mix.var(ddof=1) + erm.var(ddof=1)) / 2)
    n = r["seeds_80"]
    assert t_power(abs(mix.mean() - erm.mean()) / pooled, n, 0.05, paired=False) >= 0.8
    assert n == 2 or t_power(abs(mix.mean() - erm.mean()) / pooled, n - 1, 0.05, paired=False) < 0.8


def test_probability_of_beating_the_baseline(cli, robust):
    for metric, vals, sign in (("fgsm_accuracy", FGSM, 1), ("ts_ece", ECE, -1)):
        rows = vs(cli, robust, metric)
        for m in ("mixup", "cutmix"):
            d = vals[m] - vals["erm"]
            assert rows[m]["p_beat"] == pytest.approx(stats.norm.cdf(sign * d.mean() / d.std(ddof=1)))


def test_seeds_for_power_match_gpower_and_simulation():
    # G*Power 3.1: paired t-test, dz = 0.5, alpha 0.05 two-sided, power 0.8 -> 34 pairs; two groups,
    # d = 0.5 -> 64 per group; dz = 0.8 -> 15 pairs
    assert seeds_for_power(0.5, 1.0, 0.05, paired=True) == 34
    assert seeds_for_power(-0.5, 1.0, 0.05, paired=False) == 64
    assert seeds_for_power(0.8, 1.0, 0.05, paired=True) == 15
    assert seeds_for_power(0.0, 1.0, 0.05, paired=True) is None
    assert seeds_for_power(0.1, 0.0, 0.05, paired=True) == 2
    assert seeds_for_power(1e-4, 1.0, 0.05, paired=True) is None  # more than MAX_SEEDS
    # Monte Carlo: the paired t-test's rejection rate at n and n - 1 seeds brackets 80%
    rng = np.random.default_rng(0)
    effect = 0.9
    n = seeds_for_power(effect, 1.0, 0.05, paired=True)
    for k, above in ((n, True), (n - 1, False)):
        d = rng.normal(effect, 1.0, (40_000, k))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(k))
        rate = np.mean(np.abs(t) > stats.t.ppf(0.975, k - 1))
        assert (rate >= 0.8 - 0.006) if above else (rate < 0.8 + 0.006)


def test_compare_prints_the_seed_count_for_the_observed_difference(cli, robust):
    rows = vs(cli, robust, "fgsm_accuracy")
    d = FGSM["cutmix"] - FGSM["erm"]
    assert rows["cutmix"]["seeds_80"] == seeds_for_power(d.mean(), d.std(ddof=1), 0.05, paired=True)
    code, text = cli("compare", robust, "--metric", "fgsm_accuracy", "--against", "erm", "--format", "markdown")
    assert code == 0 and f"| {rows['cutmix']['seeds_80']} |" in text
