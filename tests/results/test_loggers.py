"""Loggers: a real local MLflow store and TensorBoard event files, read back through their own libraries."""
from __future__ import annotations

import builtins
import json

import pandas as pd
import pytest
import yaml

from conftest import TINY

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from mlflow.tracking import MlflowClient  # noqa: E402

EXP = TINY.replace("epochs: 3", "epochs: 2\n  log_steps: 4") + "grid:\n  method: [erm, {name: mixup, alpha: 0.4}]\n"


def tb_scalars(path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc


def test_run_logs_to_mlflow_and_tensorboard_and_export_matches(cli, write, tmp_path):
    out = tmp_path / "out"
    exp = write(EXP)
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--log", "mlflow", "--log", "tensorboard")
    assert code == 0, text
    assert "INFO" not in text
    runs = pd.read_parquet(out / "runs").set_index("run_id")
    epochs = pd.read_parquet(out / "epochs")

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    ml_exp = client.get_experiment_by_name("tiny")
    found = client.search_runs([ml_exp.experiment_id])
    assert len(found) == 2
    for r in found:
        rid = r.data.tags["mixcli.run_id"]
        row = runs.loc[rid]
        assert r.info.status == "FINISHED" and r.info.run_name == f"{row.method} s0"  # the values that vary
        assert r.data.tags["method"] == row.method and r.data.tags["seed"] == "0"
        assert r.data.tags["experiment"] == "tiny"
        assert r.data.tags["grid.method"] in ("erm", "mixup(alpha=0.4)")
        assert r.data.tags["mixcli.torch_version"] == row.torch_version
        cfg = json.loads(row.config)
        assert r.data.params["train.epochs"] == "2" and r.data.params["method.name"] == cfg["method"]["name"]
        assert r.data.params["train.optimizer.lr"] == str(cfg["train"]["optimizer"]["lr"])
        hist = client.get_metric_history(r.info.run_id, "test_accuracy")
        ep = epochs[epochs.run_id == rid].sort_values("epoch")
        assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
            list(zip(ep.epoch, ep.test_accuracy))
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert float(r.data.tags["summary.final_test_accuracy"]) == pytest.approx(row.final_test_accuracy, rel=1e-5)
        assert r.data.metrics["test_accuracy"] == row.final_test_accuracy  # the series' latest value
        assert not any(k.startswith(("final_", "best_")) for k in r.data.metrics)
        steps = pd.read_parquet(out / "jobs" / rid / "steps.parquet")
        assert len(steps) > 2 and (steps.step % 4 == 0).all()
        hist = sorted(client.get_metric_history(r.info.run_id, "step_loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in hist] == list(zip(steps.step, steps.loss))
        arts = [a.path for a in client.list_artifacts(r.info.run_id)]
        assert "config.yaml" in arts
        local = client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path / rid))
        assert yaml.safe_load(open(local)) == yaml.safe_load((out / "jobs" / rid / "config.yaml").read_text())

        scalars, acc = tb_scalars(out / "tensorboard" / rid)
        assert [s for s, _ in scalars["test/accuracy"]] == list(ep.epoch)
        assert [v for _, v in scalars["test/accuracy"]] == pytest.approx(list(ep.test_accuracy), rel=1e-6)
        assert [s for s, _ in scalars["train/loss"]] == [1, 2]
        assert scalars["summary/final_test_accuracy"][0][1] == pytest.approx(row.final_test_accuracy)
        assert [s for s, _ in scalars["step/lr"]] == list(steps.step)
        assert [v for _, v in scalars["step/lr"]] == pytest.approx(list(steps.lr), rel=1e-6)

    # export of the same results into another store reproduces what was logged live
    other = tmp_path / "other.db"
    code, text = cli("export", out, "--to", "mlflow", "--uri", f"sqlite:///{other}")
    assert code == 0 and "exported 2 run(s) to mlflow" in text, text
    assert len(list((tmp_path / "mlartifacts").rglob("config.yaml"))) == 2  # beside the database
    c2 = MlflowClient(tracking_uri=f"sqlite:///{other}")
    exported = {r.data.tags["mixcli.run_id"]: r for r in c2.search_runs([c2.get_experiment_by_name("tiny").experiment_id])}
    for r in found:
        e = exported[r.data.tags["mixcli.run_id"]]
        assert e.data.params == r.data.params and e.data.metrics == r.data.metrics
        assert e.info.run_name == r.info.run_name and e.info.start_time <= r.info.start_time
        assert [(m.step, m.value) for m in c2.get_metric_history(e.info.run_id, "step_loss")] == \
            [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "step_loss")]
        assert e.data.tags["grid.method"] == e.data.tags["method"] == r.data.tags["method"]
        assert [(m.step, m.value) for m in c2.get_metric_history(e.info.run_id, "test_accuracy")] == \
            [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "test_accuracy")]
    code, text = cli("export", out, "--to", "mlflow", "--uri", f"sqlite:///{other}")
    flat = " ".join(text.split())  # (the line wraps at the terminal's width, wherever the path ends)
    assert code == 0 and "exported 0 run(s)" in flat and "2 already there, skipped" in flat
    code, text = cli("export", out, "--to", "tensorboard", "--uri", tmp_path / "tb")
    assert code == 0 and "exported 2 run(s)" in text
    for rid in runs.index:
        exported_tb, _ = tb_scalars(tmp_path / "tb" / rid)
        live_tb, _ = tb_scalars(out / "tensorboard" / rid)
        assert exported_tb["test/accuracy"] == live_tb["test/accuracy"]


def test_log_key_in_file_and_errors(cli, write, tmp_path, monkeypatch):
    plain = write(EXP)
    logged = write(EXP + "log: {mlflow: null}\n", "logged.yaml")
    # log: is not part of the run configuration: same run ids
    _, a = cli("run", plain, "--dry-run")
    _, b = cli("run", logged, "--dry-run")
    ids = lambda t: sorted(w for w in t.split() if w.startswith(("erm-s0-", "mixup-s0-")))  # noqa: E731
    assert ids(a) == ids(b) and len(ids(a)) == 2
    bad = write(EXP + "log: [mlfow]\n", "bad.yaml")
    code, text = cli("validate", bad)
    assert code == 2 and f"bad.yaml:{EXP.count(chr(10)) + 1}: log" in text and "did you mean 'mlflow'" in text
    code, text = cli("run", plain, "--log", "tensorbord", "--dry-run")
    assert code == 2 and "--log" in text and "did you mean 'tensorboard'" in text

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    code, text = cli("run", logged, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and text.strip() == "error: logger 'mlflow': needs MLflow: pip install \"mixcli[mlflow]\""
    assert not (tmp_path / "o" / "runs").exists() or not list((tmp_path / "o" / "runs").iterdir())
