"""`mixcli compare --against`: paired statistics against scipy on hand-made result tables (ties, n=1,
unmatched seeds), pooled titles, several experiments in one directory, every --format."""
from __future__ import annotations

import io
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mixcli.results.store import Store


RUN_NUMBER = itertools.count()


def make_runs(out, rows, experiment="airfoil"):
    """rows: (method, seed, rmse[, extra config dict[, experiment]]) -> a results directory of regression runs."""
    store = Store(out)
    for row in rows:
        method, seed, rmse = row[:3]
        extra = row[3] if len(row) > 3 else {}
        exp = row[4] if len(row) > 4 else experiment
        cfg = {"seed": seed, "method": {"name": method}, "dataset": {"name": "airfoil", **extra}}
        rid = f"{exp}-{method}-{seed}-{next(RUN_NUMBER)}"  # unique across calls into one directory
        store.write_run({"run_id": rid, "experiment": exp, "method": method, "dataset": "airfoil", "model": "mlp",
                         "loss": "mse", "task": "regression", "seed": seed, "status": "finished",
                         "config": json.dumps(cfg), "selection": "final", "epochs": 1})
        store.write_epochs(rid, [{"epoch": 1, "train_loss": 0.0, "test_rmse": rmse}])
    return out


ERM = [3.0, 2.8, 2.9, 3.1, 2.7, 3.0]
CMX = [2.9, 2.8, 3.0, 2.95, 2.5, 2.85]  # seed 1: a tie


def compare_json(cli, out, *args):
    code, text = cli("compare", out, "--metric", "rmse", "--format", "json", *args)
    assert code == 0, text
    return json.loads(text)


def test_paired_statistics_match_scipy(cli, tmp_path):
    out = make_runs(tmp_path / "r", [("erm", s, v) for s, v in enumerate(ERM)]
                    + [("cmixup", s, v) for s, v in reversed(list(enumerate(CMX)))])  # order must not matter
    doc = compare_json(cli, out, "--against", "erm")
    groups = {g["method"]: g for g in doc["groups"]}
    assert groups["erm"]["rmse"]["vs_baseline"] is None
    r = groups["cmixup"]["rmse"]["vs_baseline"]
    x, b = np.array(CMX), np.array(ERM)
    d = x - b
    n = len(d)
    se = d.std(ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    assert r["test"] == "paired" and r["n"] == n and r["baseline"] == "erm"
    assert r["diff"] == pytest.approx(d.mean()) and r["se"] == pytest.approx(se)
    assert r["ci_low"] == pytest.approx(d.mean() - half) and r["ci_high"] == pytest.approx(d.mean() + half)
    # rmse: lower is better; seed 1 is an exact tie
    assert (r["wins"], r["ties"], r["losses"]) == (4, 1, 1)
    assert r["t_p"] == pytest.approx(stats.ttest_rel(x, b).pvalue)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, b).pvalue)
    assert r["significant"] == (stats.ttest_rel(x, b).pvalue < 0.05)
    assert doc["against"] == "erm" and doc["paired_on"] == ["seed"]
    # a looser level: the interval narrows and the verdict follows the t-test p-value
    doc = compare_json(cli, out, "--against", "erm", "--alpha", "0.5")
    r2 = {g["method"]: g for g in doc["groups"]}["cmixup"]["rmse"]["vs_baseline"]
    assert r2["ci_high"] - r2["ci_low"] == pytest.approx(2 * stats.t.ppf(0.75, n - 1) * se)
    assert r2["significant"] is bool(stats.ttest_rel(x, b).pvalue < 0.5)


def test_unmatched_seeds_use_welch(cli, tmp_path):
    erm, mix = [3.0, 2.8, 2.9, 3.1], [2.6, 2.7, 2.65]
    out = make_runs(tmp_path / "r", [("erm", s, v) for s, v in enumerate(erm)]
                    + [("mixup", s + 10, v) for s, v in enumerate(mix)])
    r = {g["method"]: g for g in compare_json(cli, out, "--against", "erm")["groups"]}["mixup"]["rmse"]["vs_baseline"]
    welch = stats.ttest_ind(mix, erm, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert r["test"] == "Welch" and (r["n"], r["n_baseline"]) == (3, 4)
    assert r["t_p"] == pytest.approx(welch.pvalue)
    assert r["diff"] == pytest.approx(np.mean(mix) - np.mean(erm))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["wins"] is None and r["wilcoxon_p"] is None
    code, text = cli("compare", out, "--metric", "rmse", "--against", "erm")
    assert code == 0 and "Welch" in text


def test_single_seed_shows_n1_without_spread(cli, tmp_path):
    out = make_runs(tmp_path / "r", [("erm", 0, 3.0), ("mixup", 0, 2.5)])
    code, text = cli("compare", out, "--metric", "rmse", "--against", "erm", "--format", "markdown")
    assert code == 0, text
    assert "± 0.0000" not in text and "± -" not in text
    assert "| mixup | 1 | **2.5000** |" in text
    doc = compare_json(cli, out, "--against", "erm")
    g = {g["method"]: g for g in doc["groups"]}
    assert g["mixup"]["n"] == 1 and g["mixup"]["rmse"]["std"] is None
    r = g["mixup"]["rmse"]["vs_baseline"]
    assert r["diff"] == pytest.approx(-0.5) and r["se"] is None and r["t_p"] is None and r["significant"] is None
    assert (r["wins"], r["ties"], r["losses"]) == (1, 0, 0)


def test_pooled_groups_pair_within_the_pooled_key(cli, tmp_path):
    rows, erm, mix = [], {}, {}
    rng = np.random.default_rng(0)
    for frac in (0.1, 1.0):
        for s in range(3):
            erm[frac, s], mix[frac, s] = rng.normal(3, 0.2), rng.normal(2.9, 0.2)
            rows += [("erm", s, erm[frac, s], {"fraction": frac}), ("mixup", s, mix[frac, s], {"fraction": frac})]
    out = make_runs(tmp_path / "r", rows)
    doc = compare_json(cli, out, "--by", "method", "--against", "erm")
    assert "pooled over seeds and dataset.fraction" in doc["title"]
    assert doc["paired_on"] == ["seed", "dataset.fraction"]
    r = {g["method"]: g for g in doc["groups"]}["mixup"]["rmse"]["vs_baseline"]
    keys = sorted(erm)
    x, b = np.array([mix[k] for k in keys]), np.array([erm[k] for k in keys])
    assert r["n"] == 6 and r["t_p"] == pytest.approx(stats.ttest_rel(x, b).pvalue)
    # grouped by the fraction too: each group against erm at the same fraction, titled "over seeds"
    doc = compare_json(cli, out, "--by", "method", "--by", "dataset.fraction", "--against", "erm")
    assert doc["title"].endswith("mean ± std over seeds")
    for g in doc["groups"]:
        if g["method"] == "mixup":
            frac = float(g["dataset.fraction"])
            r = g["rmse"]["vs_baseline"]
            assert r["baseline"] == f"erm fraction={g['dataset.fraction']}"
            d = [mix[frac, s] - erm[frac, s] for s in range(3)]
            assert r["diff"] == pytest.approx(np.mean(d)) and r["n"] == 3


def test_two_experiments_are_not_averaged_as_seeds(cli, tmp_path):
    out = make_runs(tmp_path / "r", [("erm", 0, 3.0, {}, "a"), ("erm", 1, 3.2, {}, "a"),
                                     ("erm", 0, 1.0, {}, "b"), ("erm", 1, 1.2, {}, "b")])
    doc = compare_json(cli, out)
    assert "experiment" in doc["by"] and len(doc["groups"]) == 2
    means = sorted(g["rmse"]["mean"] for g in doc["groups"])
    assert means == pytest.approx([1.1, 3.1])
    doc = compare_json(cli, out, "--by", "method")
    assert len(doc["groups"]) == 2


def test_csv_and_table_formats_carry_the_statistics(cli, tmp_path):
    out = make_runs(tmp_path / "r", [("erm", s, v) for s, v in enumerate(ERM)]
                    + [("cmixup", s, v) for s, v in enumerate(CMX)])
    code, text = cli("compare", out, "--metric", "rmse", "--against", "erm", "--format", "csv")
    assert code == 0, text
    df = pd.read_csv(io.StringIO(text)).set_index("method")
    assert df.loc["cmixup", "rmse_t_p"] == pytest.approx(stats.ttest_rel(CMX, ERM).pvalue)
    assert df.loc["cmixup", "rmse_test"] == "paired" and df.loc["cmixup", "baseline"] == "erm"
    assert pd.isna(df.loc["erm", "rmse_diff"])
    code, text = cli("compare", out, "--metric", "rmse", "--against", "erm")
    assert code == 0 and "W/T/L" in text and "4/1/1" in text
    assert "ns" in text  # p = 0.13 > 0.05 at these values
    assert stats.ttest_rel(CMX, ERM).pvalue > 0.05


def test_bad_baseline_and_alpha_are_clear_errors(cli, tmp_path):
    out = make_runs(tmp_path / "r", [("erm", 0, 3.0), ("mixup", 0, 2.5)])
    code, text = cli("compare", out, "--against", "ermm")
    assert code == 2 and "--against ermm" in text and "did you mean 'erm'" in text
    code, text = cli("compare", out, "--against", "erm", "--alpha", "1.5")
    assert code == 2 and "--alpha" in text


def test_baseline_by_part_of_a_label(cli, tmp_path):
    rows = [(m, s, v + 0.1 * s) for m, v in (("erm", 3.0), ("mixup", 2.8)) for s in range(3)]
    out = make_runs(tmp_path / "r", rows)
    store_rows = [("mixup", s, 2.5 + 0.1 * s, {"fraction": 0.5}) for s in range(3)]
    make_runs(out, store_rows)
    doc = compare_json(cli, out, "--against", "fraction=0.5")  # the words of one group's label
    r = {(g["method"], g["dataset.fraction"]): g for g in doc["groups"]}[("erm", "-")]["rmse"]["vs_baseline"]
    assert r["baseline"] == "mixup fraction=0.5" and r["diff"] == pytest.approx(0.5)
    # a value of one key: each group against the group with that value and the same other keys
    doc = compare_json(cli, out, "--against", "mixup")
    r = {(g["method"], g["dataset.fraction"]): g for g in doc["groups"]}[("erm", "-")]["rmse"]["vs_baseline"]
    assert r["baseline"] == "mixup" and r["diff"] == pytest.approx(0.2)
    make_runs(out, [("erm", s, 2.0, {"fraction": 0.5}) for s in range(3)])
    code, text = cli("compare", out, "--metric", "rmse", "--against", "fraction=0.5")  # now two groups
    assert code == 2 and "matches 2 groups" in text
