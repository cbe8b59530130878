"""Experiment files: validation messages, overrides, grid expansion and run ids."""
from __future__ import annotations

import pytest

from mixcli.config.jobs import expand
from mixcli.config.spec import load_experiment

from conftest import TINY


def bad(cli, path, *extra):
    code, out = cli("validate", path, *extra)
    assert code == 2, out
    assert "Traceback" not in out
    return " ".join(out.split())  # unwrap rich's line folding


def test_valid_file_reports_job_count(cli, write):
    p = write(TINY.replace("seeds: [0]\n", "") +
              "grid:\n  method: [erm, mixup]\n  train.optimizer.lr: [0.1, 0.01]\nseeds: 3\n")
    code, out = cli("validate", p)
    assert code == 0, out
    assert "12 job(s)" in out


def test_missing_file(cli, tmp_path):
    out = bad(cli, tmp_path / "nope.yaml")
    assert "nope.yaml: no such experiment file" in out


def test_yaml_syntax_error_names_line(cli, write):
    p = write("name: x\ndataset: digits\nmodel: [mlp\n")
    out = bad(cli, p)
    assert "exp.yaml:" in out and "YAML syntax error" in out


@pytest.mark.parametrize("text,expect", [
    (TINY + "trian: {epochs: 3}\n", "exp.yaml:10: trian: unknown key 'trian' (did you mean 'train'?)"),
    (TINY.replace("method: erm", "method: mixpu"), "exp.yaml:4: method: unknown method 'mixpu' (did you mean 'mixup'?)"),
    (TINY.replace("{name: digits}", "{name: digitz}"), "unknown dataset 'digitz' (did you mean 'digits'?)"),
    (TINY.replace("{name: mlp, widths: [32]}", "{name: mpl}"), "unknown model 'mpl' (did you mean 'mlp'?)"),
    (TINY.replace("epochs: 3", "epochs: ten"), "exp.yaml:6: train.epochs: expected an integer in [1, 1000000], got 'ten'"),
    (TINY.replace("epochs: 3", "epochs: 0"), "exp.yaml:6: train.epochs: expected an integer in [1, 1000000], got 0"),
    (TINY.replace("epochs: 3", "epochs: -3"), "train.epochs: expected an integer in [1, 1000000], got -3"),
    (TINY.replace("batch_size: 64", "batch_sise: 64"), "train.batch_sise: unknown key 'batch_sise' (did you mean 'batch_size'?)"),
    (TINY.replace("lr: 0.05", "lr: -1"), "train.optimizer.lr: expected a finite number > 0, got -1"),
    (TINY + "grid: {}\n", "exp.yaml:10: grid: the grid is empty"),
    (TINY + "grid:\n  method: erm\n", "exp.yaml:11: grid.method: expected a non-empty list of values"),
    (TINY + "grid:\n  method: []\n", "grid.method: expected a non-empty list of values"),
    (TINY.replace("method: erm", "method: {name: mixup, alpah: 0.2}"), "method.alpah: unknown option 'alpah' for method 'mixup' (did you mean 'alpha'?)"),
    (TINY.replace("method: erm", "method: {name: mixup, alpha: fast}"), "method.alpha: expected a number, got 'fast'"),
    (TINY.replace("method: erm", "method: {name: mixup, alpha: -1}"), "method: method 'mixup': alpha must be >= 0, got -1"),
    (TINY.replace("seeds: [0]", "seeds: [0, 0]"), "seeds: seeds are repeated"),
    (TINY.replace("name: tiny\n", ""), "name: expected a non-empty string"),
    ("name: x\nmodel: mlp\n", "dataset: missing required key 'dataset'"),
    ("- a\n- b\n", "exp.yaml:1: expected a mapping of keys"),
    ("", "the file is empty"),
    (TINY + "grid:\n  method: [erm, {name: mixup, alpha: -2}]\n", "grid.method[1] (line 11): method: method 'mixup': alpha must be >= 0"),
])
def test_bad_files_give_one_clear_message(cli, write, text, expect):
    out = bad(cli, write(text))
    assert expect in out


def test_override_applies_before_validation(cli, write):
    p = write(TINY)
    out = bad(cli, p, "--set", "train.epochs=0")
    assert "--set train.epochs: expected an integer in [1, 1000000], got 0" in out
    code, out = cli("validate", p, "--set", "train.epochs=5", "--set", "method.alpha=0.3",
                    "--set", "method.name=mixup")
    assert code == 0, out
    exp = load_experiment(p, ["train.epochs=5", "method=mixup", "method.alpha=0.3"])
    cfg = expand(exp)[0].config
    assert cfg["train"]["epochs"] == 5 and cfg["method"] == {"name": "mixup", "alpha": 0.3, "prob": 1.0,
                                                             "mode": "batch", "label_smoothing": 0.0,
                                                             "off_after_epoch": None} | {
        k: v for k, v in cfg["method"].items() if k not in ("name", "alpha", "prob", "mode", "label_smoothing",
                                                           "off_after_epoch")}


def test_bad_override_syntax(cli, write):
    out = bad(cli, write(TINY), "--set", "train.epochs")
    assert "expected KEY=VALUE" in out


def test_grid_expands_to_cartesian_product_with_stable_run_ids(write):
    p = write(TINY.replace("seeds: [0]", "seeds: [0, 1]") +
              "grid:\n  method: [erm, {name: mixup, alpha: 0.2}]\n  dataset.fraction: [0.5, 1.0]\n")
    jobs = expand(load_experiment(p))
    assert len(jobs) == 2 * 2 * 2
    assert len({j.run_id for j in jobs}) == 8
    again = expand(load_experiment(p))
    assert [j.run_id for j in jobs] == [j.run_id for j in again]
    combos = {(j.config["method"]["name"], j.config["dataset"]["fraction"], j.config["seed"]) for j in jobs}
    assert combos == {(m, f, s) for m in ("erm", "mixup") for f in (0.5, 1.0) for s in (0, 1)}
    # any change to the resolved configuration changes the id; the defaults are part of it
    other = expand(load_experiment(p, ["train.optimizer.lr=0.06"]))
    assert not {j.run_id for j in jobs} & {j.run_id for j in other}
    explicit = expand(load_experiment(p, ["train.optimizer.momentum=0.9"]))  # 0.9 is the default
    assert [j.run_id for j in explicit] == [j.run_id for j in jobs]


def test_resolved_config_has_every_default(write):
    cfg = expand(load_experiment(write(TINY)))[0].config
    assert cfg["train"]["optimizer"]["momentum"] == 0.9
    assert cfg["train"]["schedule"]["name"] == "cosine"
    assert cfg["dataset"]["val_size"] == 180
    assert cfg["loss"] == {"name": "soft_ce"}
    assert cfg["eval"]["selection"] == "final"
