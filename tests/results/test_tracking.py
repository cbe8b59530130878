"""Tracking that survives a real sweep: several processes and workers on one new MLflow store, read back
through a real ``mlflow server`` over its REST API; unreachable and damaged trackers; W&B offline runs read
with wandb's own records; TensorBoard HParams; run names in the display and ``status``."""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from conftest import TINY
from tracking_helpers import mlflow_server, rest, wandb_records

pytest.importorskip("mlflow")
import mlflow.server  # noqa: E402

#: the full MLflow serves a UI; mlflow-skinny has none
needs_ui = pytest.mark.skipif(not (Path(mlflow.server.__file__).parent / "js" / "build").is_dir(),
                              reason='needs the full MLflow with its UI: pip install "mixcli[mlflow]"')

GRID = "grid:\n  method: [{name: mixup, alpha: 0.4}, {name: mixup, alpha: 1.0}]\n  train.optimizer.lr: [0.05, 0.1]\n"
SWEEP = TINY.replace("epochs: 3", "epochs: 1") + GRID  # 4 runs of one epoch
MIXCLI = str(Path(sys.executable).with_name("mixcli"))


def _run(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([MIXCLI, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**__import__("os").environ, "COLUMNS": "80"})


@needs_ui
def test_two_processes_and_workers_on_a_new_store_log_every_run_once_and_the_server_reads_them(cli, write, tmp_path):
    out = tmp_path / "out"
    exp = write(SWEEP)
    # two sweeps at once (one of them with 2 workers) on the same new output folder and MLflow store
    a = _run(["run", exp, "--out", out, "--device", "cpu", "--jobs", "2", "--log", "mlflow"], tmp_path)
    b = _run(["run", exp, "--out", out, "--device", "cpu", "--log", "mlflow"], tmp_path)
    texts = [p.communicate(timeout=600)[0] for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], texts
    for text in texts:
        assert "warning" not in text and "Traceback" not in text and "INFO" not in text, text
    runs = pd.read_parquet(out / "runs").set_index("run_id")
    assert len(runs) == 4 and (runs.status == "finished").all()

    with mlflow_server(out / "mlflow.db") as url:
        exp_id = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]["experiment_id"]
        found = rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        by_id = {}
        for r in found:
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            by_id.setdefault(tags["mixcli.run_id"], []).append((r, tags))
        assert sorted(by_id) == sorted(runs.index)  # every run arrived, each exactly once
        assert all(len(v) == 1 for v in by_id.values())
        names = set()
        for rid, [(r, tags)] in by_id.items():
            row = runs.loc[rid]
            assert r["info"]["status"] == "FINISHED"
            names.add(r["info"]["run_name"])
            assert r["info"]["run_name"] == tags["mixcli.name"]
            assert tags["mixcli.group"] == tags["mixcli.name"].rsplit(" ", 1)[0]
            metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
            assert "test_accuracy" in metrics and "train_loss" in metrics
            assert not any(k.startswith(("final_", "best_")) for k in metrics)  # summaries are tags
            assert float(tags["summary.final_test_accuracy"]) == pytest.approx(row.final_test_accuracy, rel=1e-5)
            assert metrics["test_accuracy"] == pytest.approx(row.final_test_accuracy)
            files = rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={r['info']['run_id']}").get("files", [])
            assert "config.yaml" in [f["path"] for f in files]
        assert names == {"mixup alpha=0.4 lr=0.05 s0", "mixup alpha=0.4 lr=0.1 s0", "mixup alpha=1 lr=0.05 s0",
                         "mixup alpha=1 lr=0.1 s0"}

        # the UI that `mlflow server` / `mlflow ui` serves: the full MLflow's page and its scripts
        with urllib.request.urlopen(url + "/", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and "<script" in page and "static-files" in page, page[:300]
        bundle = re.findall(r'src="([^"]+\.js)"', page)[0].lstrip("./")
        with urllib.request.urlopen(f"{url}/{bundle}", timeout=60) as r:
            assert r.status == 200 and len(r.read()) > 100_000  # the UI's own code (mlflow-skinny has none)
        ui = rest(url, "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]  # what the UI asks
        assert sorted(r["info"]["run_name"] for r in ui) == sorted(names)

        # export to the server finds every run there already (through its REST API)
        code, text = cli("export", out, "--to", "mlflow", "--uri", url)
        assert code == 0 and "exported 0 run(s)" in text and "4 already there" in text, text


def test_export_keeps_run_times_and_names(cli, write, tmp_path):
    out = tmp_path / "out"
    code, text = cli("run", write(TINY.replace("epochs: 3", "epochs: 2") + "grid:\n  method: [erm, cutmix]\n"),
                     "--out", out, "--device", "cpu")
    assert code == 0, text
    runs = pd.read_parquet(out / "runs").set_index("run_id")
    code, text = cli("export", out, "--to", "mlflow", "--uri", f"sqlite:///{tmp_path / 'x.db'}")
    assert code == 0 and "exported 2 run(s)" in text, text
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'x.db'}")
    for r in c.search_runs([c.get_experiment_by_name("tiny").experiment_id]):
        row = runs.loc[r.data.tags["mixcli.run_id"]]
        start = pd.Timestamp(row.started_at).timestamp() * 1000
        end = pd.Timestamp(row.finished_at).timestamp() * 1000
        assert (r.info.start_time, r.info.end_time) == (start, end)
        assert r.info.run_name == f"{row.method} s0"
        hist = sorted(c.get_metric_history(r.info.run_id, "train_loss"), key=lambda m: m.step)
        assert hist[0].timestamp > start and hist[-1].timestamp <= start + 1000 * row.wall_time_s + 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_unreachable_or_silent_server_is_one_warning_and_the_results_are_unaffected(cli, write, tmp_path):
    exp = write(TINY.replace("epochs: 3", "epochs: 1"))
    port = _closed_port()
    code, text = cli("run", exp, "--out", tmp_path / "a", "--device", "cpu", "--log", f"mlflow=http://127.0.0.1:{port}")
    assert code == 0, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "cannot be reached" in warnings[0] and "off for this sweep" in warnings[0], text
    assert f"mixcli export {tmp_path / 'a'} --to mlflow --uri http://127.0.0.1:{port}" in warnings[0]
    assert (pd.read_parquet(tmp_path / "a" / "runs").status == "finished").all()

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, text = cli("run", exp, "--out", tmp_path / "b", "--device", "cpu", "--log", f"mlflow={uri}")
    assert code == 0, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "no answer within 3s" in warnings[0], text
    assert (pd.read_parquet(tmp_path / "b" / "runs").status == "finished").all()

    code, text = cli("export", tmp_path / "a", "--to", "mlflow", "--uri", f"http://127.0.0.1:{port}")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "cannot be reached" in text, text


def test_damaged_store_is_one_line_and_export_elsewhere_works(cli, write, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").write_bytes(b"this is not a database" * 100)
    exp = write(TINY.replace("epochs: 3", "epochs: 1"))
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--log", "mlflow")
    assert code == 0, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "logger mlflow" in warnings[0] and "SQL" not in text, text
    code, text = cli("export", out, "--to", "mlflow")
    assert code == 2 and len(text.strip().splitlines()) == 1 and "--to mlflow" in text, text
    code, text = cli("export", out, "--to", "mlflow", "--uri", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert code == 0 and "exported 1 run(s)" in text, text


def _wandb_run(d: Path) -> dict:
    recs = wandb_records(next(d.glob("*.wandb")))
    kinds = {}
    for r in recs:
        kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
    run = kinds["run"][0].run
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.history.item}
               for h in kinds["history"]]
    summary = {}
    for s in kinds.get("summary", []):
        summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in s.summary.update})
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return {"run": run, "history": history, "summary": summary, "config": config,
            "exit": kinds["exit"][0].exit.exit_code}


def test_wandb_offline_and_tensorboard_hparams(cli, write, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2

    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: offline
    out = tmp_path / "out"
    exp = write(TINY.replace("epochs: 3", "epochs: 2\n  log_steps: 8") + "grid:\n  method: [erm, {name: mixup, alpha: 0.4}]\n")
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--log", "wandb", "--log", "tensorboard")
    assert code == 0 and "warning" not in text, text
    runs = pd.read_parquet(out / "runs").set_index("run_id")
    epochs = pd.read_parquet(out / "epochs")
    dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2
    for d in dirs:
        w = _wandb_run(d)
        rid = w["run"].run_id
        row = runs.loc[rid]
        assert w["run"].project == "tiny" and w["run"].display_name == f"{row.method} s0"
        assert w["run"].run_group == row.method and w["run"].job_type == row.method
        assert list(w["run"].tags) == ["tiny", row.method, "seed=0"]
        assert w["config"]["train"]["optimizer"]["lr"] == 0.05 and w["config"]["mixcli"]["run_id"] == rid
        assert w["config"]["grid"]["method"] in ("erm", "mixup(alpha=0.4)")
        per_epoch = [h for h in w["history"] if "test_accuracy" in h]
        ep = epochs[epochs.run_id == rid].sort_values("epoch")
        assert [h["epoch"] for h in per_epoch] == list(ep.epoch)
        assert [h["test_accuracy"] for h in per_epoch] == pytest.approx(list(ep.test_accuracy))
        steps = pd.read_parquet(out / "jobs" / rid / "steps.parquet")
        assert [h["optimizer_step"] for h in w["history"] if "step/loss" in h] == list(steps.step)
        assert w["summary"]["final_test_accuracy"] == pytest.approx(row.final_test_accuracy)
        assert w["summary"]["status"] == "finished" and w["exit"] == 0

        acc = ea.EventAccumulator(str(out / "tensorboard" / rid), size_guidance={"tensors": 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = {k: (v.string_value or v.number_value) for k, v in start.session_start_info.hparams.items()}
        assert hp["method"] == row.method and hp["name"] == f"{row.method} s0"
        assert hp["grid.method"] in ("erm", "mixup(alpha=0.4)")
        cfg = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        assert "summary/final_test_accuracy" in [m.name.tag for m in cfg.experiment.metric_infos]
    # export skips runs W&B already holds
    code, text = cli("export", out, "--to", "wandb")
    assert code == 0 and "2 already there" in text, text


def test_display_and_status_show_the_values_that_vary_in_80_columns(write, tmp_path):
    from mixcli.config.jobs import expand, name_jobs
    from mixcli.config.spec import load_experiment
    from mixcli.execution.display import LiveDisplay

    extra = "  method.alpha: [0.2, 0.4]\n  dataset.fraction: [0.3, 1.0]\n"
    exp = write(TINY.replace("epochs: 3", "epochs: 1").replace("seeds: [0]", "seeds: [0, 1]") +
                "grid:\n  method: [mixup]\n" + extra)
    jobs = name_jobs(expand(load_experiment(exp)))
    assert [j.title for j in jobs][:3] == ["mixup alpha=0.2 fraction=0.3 s0", "mixup alpha=0.2 fraction=0.3 s1",
                                           "mixup alpha=0.2 fraction=1 s0"]
    for width in (80, 120):
        buf = io.StringIO()
        d = LiveDisplay(Console(file=buf, width=width, force_terminal=True, color_system=None), 2)
        d.begin(len(jobs))
        for j in jobs[-2:]:
            d.submitted(j)
            d.progress(j, "start", (200, 10, 1))
            d.progress(j, "epoch", (12, {"train_loss": 1.234, "test_accuracy": 0.7103}))
        d.p.refresh()
        screen = buf.getvalue()
        d.p.stop()
        assert "mixup alpha=0.4 fraction=1 s1" in screen and "ep 12/200 loss 1.234 acc 71.03%" in screen, screen
    # a long label is cut inside, never losing its seed
    from mixcli.execution.display import fit

    cut = fit("mixup alpha=0.4 fraction=0.3 lr=0.1 weight_decay=0.0005 s12", 30)
    assert cut == "mixup alpha=0.4 fraction=… s12" and len(cut) == 30

    # `status` of the output directory names its running runs the same way, and fits 80 columns
    from mixcli.execution.claims import Claim
    from mixcli.execution.status import sweep_status
    from mixcli.results.store import Store

    out = tmp_path / "o"
    store, claims = Store(out), []
    for j in jobs:
        claims.append(Claim(out, j.run_id))
        assert claims[-1].acquire()
        store.write_run({"run_id": j.run_id, "experiment": "tiny", "method": "mixup", "seed": j.config["seed"],
                         "config": json.dumps(j.config), "status": "running"})
    try:
        st = sweep_status([out])
        assert sorted(r["label"] for r in st.running) == sorted(j.title for j in jobs)
        from typer.testing import CliRunner

        from mixcli.cli import app

        r = CliRunner().invoke(app, ["status", str(out)], env={"COLUMNS": "80"})
        assert r.exit_code == 0, r.output
        assert "mixup alpha=0.4 fraction=1 s1" in r.output and max(map(len, r.output.splitlines())) <= 80, r.output
    finally:
        for c in claims:
            c.release()


def test_a_logger_failing_while_runs_train_is_one_line_per_run(cli, write, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlartifacts").write_text("a file where MLflow keeps its artifacts: every upload fails")
    exp = write(TINY.replace("epochs: 3", "epochs: 1") + "grid:\n  method: [erm, cutmix]\n")
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--log", "mlflow")
    assert code == 0, text
    failed = [ln for ln in text.splitlines() if "logger mlflow failed" in ln]
    assert len(failed) == 2 and all("off for this run" in ln and len(ln) < 300 for ln in failed), text
    assert "Traceback" not in text and "[SQL" not in text
    assert (pd.read_parquet(out / "runs").status == "finished").all()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")  # what came before the failure is there
    found = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["method"] for r in found) == ["cutmix", "erm"]
    assert all(c.get_metric_history(r.info.run_id, "test_accuracy") for r in found)
