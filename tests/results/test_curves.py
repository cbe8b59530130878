"""Generalization curves (mixcli.results.curves, `mixcli curves`), epoch selection rules (mixcli.results.selection), and the
teacher-student toy (teacher_student dataset, random_features model)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from mixcli.api import PluginError
from mixcli.results.curves import (PEAK_FRACTION, best_point, braille_rows, curve_stats, drop, drop_floor, is_u_shaped,
                           load_curves, nice_ticks, plot_png, render_chart, render_table)
from mixcli.results.selection import select
from mixcli.results.store import Store


# ------------------------------------------------------------------------------------------- statistics
def test_best_point_ties_go_to_the_earliest_epoch():
    assert best_point([1, 2, 3, 4], [0.5, 0.9, 0.9, 0.7], True) == (2, 0.9)
    assert best_point([1, 2, 3, 4], [0.5, 0.2, 0.2, 0.7], False) == (2, 0.2)
    # order of the input does not matter; the earliest *epoch* wins, not the first row
    assert best_point([4, 3, 2, 1], [0.9, 0.9, 0.1, 0.0], True) == (3, 0.9)


def test_best_point_skips_nan_and_rejects_an_empty_curve():
    assert best_point([1, 2, 3], [float("nan"), 0.4, 0.3], True) == (2, 0.4)
    with pytest.raises(ValueError):
        best_point([1, 2], [float("nan"), float("nan")], True)


def test_drop_is_sign_adjusted():
    assert drop(0.9, 0.85, True) == pytest.approx(0.05)       # accuracy fell by 5 points
    assert drop(0.30, 0.36, False) == pytest.approx(0.06)     # rmse rose by 0.06
    assert drop(0.9, 0.95, True) == pytest.approx(-0.05)      # final better than best: impossible for the true
    assert drop_floor("accuracy", 0.9) == 0.005               # best, but the function is plain arithmetic
    assert drop_floor("rmse", 0.30) == pytest.approx(0.003)
    assert drop_floor("rmse", -2.0) == pytest.approx(0.02)


def test_u_shape_rule_boundaries():
    # peak at exactly 0.8 * last counts; just after does not
    assert is_u_shaped(80, 100, 0.02, 0.01, 0.005)
    assert not is_u_shaped(81, 100, 0.02, 0.01, 0.005)
    # the drop must exceed both the seed spread and the floor (strictly)
    assert not is_u_shaped(10, 100, 0.01, 0.01, 0.005)
    assert not is_u_shaped(10, 100, 0.004, 0.0, 0.005)
    assert is_u_shaped(10, 100, 0.006, 0.0, 0.005)
    assert is_u_shaped(10, 100, 0.006, float("nan"), 0.005)   # unknown spread (one seed): the floor decides
    assert PEAK_FRACTION == 0.8


def test_curve_stats_on_known_curves():
    ep = np.arange(1, 11)
    u = np.array([0.80, 0.90, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.90, 0.89])  # accuracy, peak at epoch 3
    s = curve_stats(ep, u, final_std=0.01, metric="accuracy")
    assert (s.best_epoch, s.best, s.final, s.last_epoch) == (3, 0.95, 0.89, 10)
    assert s.drop == pytest.approx(0.06) and s.floor == 0.005 and s.u_shaped
    # same curve with a seed spread larger than the drop: not U-shaped
    assert not curve_stats(ep, u, final_std=0.07, metric="accuracy").u_shaped
    # monotone increasing (erm-like): best is last, drop 0
    mono = np.linspace(0.8, 0.95, 10)
    s = curve_stats(ep, mono, 0.0, "accuracy")
    assert s.best_epoch == 10 and s.drop == 0 and not s.u_shaped
    # lower-is-better rmse: falls then rises
    r = np.array([0.50, 0.35, 0.30, 0.31, 0.33, 0.34, 0.35, 0.36, 0.36, 0.37])
    s = curve_stats(ep, r, 0.002, "rmse")
    assert s.best_epoch == 3 and s.drop == pytest.approx(0.07) and s.u_shaped
    # a late peak (epoch 9 of 10) is not a U even with a big drop
    late = np.array([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93, 0.99, 0.80])
    assert not curve_stats(ep, late, 0.0, "accuracy").u_shaped


def test_curve_stats_ties_and_a_single_epoch():
    s = curve_stats([1, 2, 3, 4, 5], [0.7, 0.9, 0.9, 0.9, 0.8], 0.0, "accuracy")
    assert s.best_epoch == 2 and s.drop == pytest.approx(0.1) and s.u_shaped
    one = curve_stats([7], [0.42], 0.0, "accuracy")
    assert (one.best_epoch, one.last_epoch, one.best, one.final) == (7, 7, 0.42, 0.42)
    assert one.drop == 0 and not one.u_shaped
    # a flat curve: ties everywhere, best is the first epoch, no drop
    flat = curve_stats([1, 2, 3], [0.5, 0.5, 0.5], 0.0, "accuracy")
    assert flat.best_epoch == 1 and flat.drop == 0 and not flat.u_shaped


# ------------------------------------------------------------------------------------------- selection
def _epochs(acc_test, acc_val=None, shuffle=True):
    n = len(acc_test)
    df = pd.DataFrame({"run_id": "r", "epoch": np.arange(1, n + 1), "test_accuracy": acc_test,
                       "val_accuracy": acc_val if acc_val is not None else [float("nan")] * n,
                       "train_loss": np.linspace(2, 1, n)})
    return df.sample(frac=1.0, random_state=0) if shuffle else df


def test_select_final_takes_the_last_epoch_whatever_the_row_order():
    row, label = select(_epochs([0.5, 0.9, 0.7]), "final", "classification")
    assert row["epoch"] == 3 and row["test_accuracy"] == 0.7 and label == "final epoch"


def test_select_best_uses_val_when_present():
    row, label = select(_epochs([0.5, 0.9, 0.7, 0.6], acc_val=[0.6, 0.7, 0.8, 0.8]), "best", "classification")
    assert row["epoch"] == 3 and row["test_accuracy"] == 0.7      # val peak (tie 3/4 -> earliest), not test peak
    assert label == "best epoch on val accuracy"


def test_select_best_falls_back_to_test_and_says_so():
    row, label = select(_epochs([0.5, 0.9, 0.9, 0.6]), "best", "classification")   # val column all NaN
    assert row["epoch"] == 2 and label == "best epoch on test accuracy"
    no_val = _epochs([0.5, 0.9, 0.7]).drop(columns=["val_accuracy"])
    row, label = select(no_val, "best", "classification")
    assert row["epoch"] == 2 and "test" in label


def test_select_best_regression_minimises_rmse():
    df = pd.DataFrame({"epoch": [1, 2, 3], "test_rmse": [0.5, 0.2, 0.3], "val_rmse": [0.4, 0.35, 0.1]})
    row, label = select(df, "best", "regression")
    assert row["epoch"] == 3 and label == "best epoch on val rmse"


def test_select_median_last10_with_fewer_and_more_epochs():
    row, label = select(_epochs([0.1, 0.4, 0.2, 0.3]), "median_last10", "classification")
    assert row["test_accuracy"] == pytest.approx(0.25) and label == "median of last 4 epochs"
    acc = [0.0, 0.0] + [0.1 * i for i in range(1, 11)]      # 12 epochs: the first two are left out
    row, label = select(_epochs(acc), "median_last10", "classification")
    assert row["test_accuracy"] == pytest.approx(np.median(acc[2:])) and label == "median of last 10 epochs"


def test_select_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(_epochs([0.5]), "last", "classification")


# ------------------------------------------------------------------------------------- results directory
def _curve(kind: str, n: int, seed: int) -> np.ndarray:
    e = np.arange(1, n + 1)
    rise = 0.95 - 0.4 * np.exp(-e / 4)
    noise = 0.002 * np.sin(seed + e)
    if kind == "u":                                   # peaks around epoch 12, then decays by ~5 points
        return rise - 0.06 * np.clip((e - 12) / (n - 12), 0, 1) + noise
    return rise + noise


def make_results(out, epochs=40, seeds=(0, 1, 2), off=False):
    store = Store(out)
    for frac in (0.1, 1.0):
        variants = [("erm", "up", None), ("mixup", "u" if frac == 0.1 else "up", None)] + \
            ([("mixup", "up", 20)] if off else [])
        for method, kind, t in variants:
            for s in seeds:
                cfg = {"name": "fake", "task": "classification", "seed": s,
                       "dataset": {"name": "digits", "fraction": frac},
                       "method": {"name": method, "off_after_epoch": t}, "eval": {"selection": "final"}}
                rid = f"{method}-{frac}-{t}-s{s}"
                acc = _curve(kind, epochs, s)
                store.write_epochs(rid, [{"epoch": int(e), "train_loss": 1.0, "test_accuracy": float(a),
                                          "val_accuracy": float(a) - 0.01} for e, a in zip(range(1, epochs + 1), acc)])
                store.write_run({"run_id": rid, "experiment": "fake", "method": method, "dataset": "digits",
                                 "model": "mlp", "loss": "soft_ce", "task": "classification", "seed": s,
                                 "status": "finished", "config": json.dumps(cfg), "selection": "final",
                                 "epochs": epochs})
    return out


def test_load_curves_groups_averages_and_calls_the_u_shape(tmp_path):
    cv = load_curves(make_results(tmp_path / "r"))
    assert cv.by == ["method", "dataset.fraction"] and cv.metric == "accuracy" and cv.rule_label == "final epoch"
    got = {c.label: c for c in cv.curves}
    assert list(got) == ["erm fraction=0.1", "mixup fraction=0.1", "erm fraction=1.0", "mixup fraction=1.0"]  # by fraction
    mix = got["mixup fraction=0.1"]
    expect = np.mean([_curve("u", 40, s) for s in (0, 1, 2)], axis=0)
    np.testing.assert_allclose(mix.mean, expect, atol=1e-12)
    np.testing.assert_allclose(mix.std[-1], np.std([_curve("u", 40, s)[-1] for s in (0, 1, 2)], ddof=1))
    assert mix.runs == 3 and mix.stats.u_shaped and mix.stats.best_epoch <= 20
    assert not got["erm fraction=0.1"].stats.u_shaped and not got["mixup fraction=1.0"].stats.u_shaped
    assert mix.selected[0] == pytest.approx(expect[-1])          # 'final' rule per run, then the mean


def test_unset_options_form_their_own_group(tmp_path):
    """Runs without off_after_epoch (NaN after flattening) must not vanish next to runs that set it."""
    cv = load_curves(make_results(tmp_path / "r", off=True))
    assert cv.by == ["method", "dataset.fraction", "method.off_after_epoch"]
    assert [c.label for c in cv.curves] == [
        "erm fraction=0.1", "mixup fraction=0.1", "mixup fraction=0.1 off_after_epoch=20",
        "erm fraction=1.0", "mixup fraction=1.0", "mixup fraction=1.0 off_after_epoch=20"]
    assert all(c.runs == 3 for c in cv.curves)
    u = {c.label: c.stats.u_shaped for c in cv.curves}
    assert u["mixup fraction=0.1"] and not u["mixup fraction=0.1 off_after_epoch=20"]


def test_terminal_chart_and_table_fit_80_columns(tmp_path):
    cv = load_curves(make_results(tmp_path / "r", off=True))   # long group labels
    con = Console(width=80, record=True, color_system=None)
    con.print(render_chart(cv, width=80, height=4))
    con.print(render_table(cv))
    text = con.export_text()
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert sum("⣀" in line or "⠉" in line for line in lines) >= 4     # the braille curves are drawn
    assert any(line.strip().startswith("epoch") and "40" in line for line in lines)   # epoch axis labels
    table = render_table(cv)
    cells = {col.header: list(col.cells) for col in table.columns}
    u = dict(zip(cells["group"], cells["U-shaped"]))
    assert "yes" in u["mixup fraction=0.1"] and u["erm fraction=0.1"] == "no"
    assert cells["best ep"][cells["group"].index("mixup fraction=0.1")] in {f"{e}/40" for e in range(10, 17)}


def test_chart_caption_promises_bold_yellow_only_with_colour(tmp_path):
    cv = load_curves(make_results(tmp_path / "r", off=True))
    for use_color, promise in ((True, "best epoch in bold yellow"), (False, "best epoch as named above each chart")):
        con = Console(width=120, record=True, color_system=None)
        con.print(render_chart(cv, width=120, height=2, use_color=use_color))
        text = " ".join(con.export_text().split())
        assert promise in text and ("bold yellow" in text) == use_color


def test_braille_line_and_ticks():
    # a rising diagonal on a 2 x 1 cell grid: bottom-left dot in the first cell, top-right in the last
    grid = braille_rows([0, 1], [0, 1], width=2, height=1, x_range=(0, 1), y_range=(0, 1))
    assert grid[0][0] & 0x40 and grid[0][1] & 0x08
    flat = braille_rows([0, 1, 2], [3, 3, 3], width=3, height=2, x_range=(0, 2), y_range=(3, 3))
    assert all(m for m in flat[1]) and not any(flat[0])          # a flat curve sits on the middle dot row
    assert nice_ticks(1, 300) == [100, 200, 300] and nice_ticks(50, 300) == [50, 100, 150, 200, 250, 300]
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_png_is_a_valid_image(tmp_path):
    from PIL import Image

    cv = load_curves(make_results(tmp_path / "r"))
    path = plot_png(cv, tmp_path / "fig" / "curves.png")
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300


def test_cli_curves_writes_the_png_and_reports_errors(tmp_path, cli):
    out = make_results(tmp_path / "r")
    code, text = cli("curves", out, "--png", tmp_path / "c.png", "--select", "median_last10")
    assert code == 0, text
    assert (tmp_path / "c.png").stat().st_size > 0 and "median of last 10 epochs" in text
    code, text = cli("curves", out, "--metric", "acuracy")
    assert code == 2 and "--metric acuracy: unknown metric" in text and "accuracy" in text
    code, text = cli("curves", out, "--split", "train")
    assert code == 2 and "--split train: expected test or val" in text
    code, text = cli("curves", tmp_path / "nothing")
    assert code == 2 and "no results here" in text
    code, text = cli("curves", out, "--split", "val", "--by", "method")
    assert code == 0 and "val accuracy" in text


# ------------------------------------------------------------------------------------ teacher-student toy
def test_teacher_student_data():
    from mixcli_plugins.datasets.teacher_student import TeacherStudent

    ds = TeacherStudent(d=5, hidden=3, n=40, n_val=8, n_test=50, noise=0.1, seed=3)
    b = ds.load()
    assert b.task == "regression" and b.train.x.shape == (40, 5) and b.train.y.shape == (40, 1)
    assert b.val.x.shape == (8, 5) and b.test.x.shape == (50, 5)
    w, a = ds.teacher()
    clean = np.maximum(b.test.x.double().numpy() @ w.T, 0) @ a          # test targets are the clean teacher
    np.testing.assert_allclose(b.test.y[:, 0].numpy(), clean, rtol=1e-5, atol=1e-6)
    resid = b.train.y[:, 0].double().numpy() - np.maximum(b.train.x.double().numpy() @ w.T, 0) @ a
    assert 0.03 < resid.std() < 0.3                                       # label noise only on train
    again = TeacherStudent(d=5, hidden=3, n=80, n_val=8, n_test=50, noise=0.1, seed=3).load()
    assert torch.equal(again.test.x, b.test.x) and torch.equal(again.train.x[:40], b.train.x)
    assert not torch.equal(TeacherStudent(d=5, hidden=3, n=40, seed=4).load().test.x[:5], b.test.x[:5])
    with pytest.raises(PluginError, match="activation"):
        TeacherStudent(activation="sigmoid")
    with pytest.raises(PluginError, match="n must be"):
        TeacherStudent(n=1)


def test_mixup_targets_are_noisy_for_a_relu_teacher():
    """The premise of the theory: lam*f(x_i) + (1-lam)*f(x_j) != f(lam*x_i + (1-lam)*x_j) for a nonlinear
    teacher (the mixup label noise), and the gap vanishes at lam in {0, 1}."""
    from mixcli_plugins.datasets.teacher_student import TeacherStudent

    ds = TeacherStudent(d=20, hidden=10)
    rng = np.random.default_rng(0)
    xi, xj = rng.standard_normal((2, 500, 20))
    gap = lambda lam: lam * ds.target(xi) + (1 - lam) * ds.target(xj) - ds.target(lam * xi + (1 - lam) * xj)
    assert np.abs(gap(0.5)).mean() > 0.05
    assert np.abs(gap(1.0)).max() < 1e-12 and np.abs(gap(0.0)).max() < 1e-12


def test_random_features_trains_only_the_readout():
    from mixcli_plugins.models.random_features import RandomFeatures

    torch.manual_seed(0)
    m = RandomFeatures((6,), 2, width=50)
    names = [n for n, p in m.named_parameters()]
    assert names == ["classifier.weight"]                                 # the random layer is a buffer
    w = m.stages[0].weight
    assert w.shape == (50, 6) and not w.requires_grad and "stages.0.weight" in m.state_dict()
    x = torch.randn(7, 6)
    assert torch.equal(m(x), torch.zeros(7, 2))                            # zero-initialised readout
    torch.nn.init.normal_(m.classifier.weight)
    expect = torch.relu(x @ w.T) / math.sqrt(50) @ m.classifier.weight.T
    torch.testing.assert_close(m(x), expect)
    with pytest.raises(PluginError, match="width"):
        RandomFeatures((6,), 2, width=0)
