"""`mixcli run` end to end: parquet results, skipping, determinism, resuming after a crash, compare."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from mixcli.training import engine
from mixcli.results.store import RUN_COLUMNS

from conftest import TINY

TWO = TINY.replace("method: erm", "method: erm\ngrid:\n  method: [erm, {name: mixup, alpha: 0.4}]").replace(
    "seeds: [0]", "seeds: [0, 1]")


def test_run_records_runs_and_epochs(cli, write, tmp_path):
    out = tmp_path / "out"
    code, text = cli("run", write(TWO), "--out", out, "--device", "cpu")
    assert code == 0, text
    assert "mean ± std over seeds" in text
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == 4 and set(runs["status"]) == {"finished"}
    assert list(runs.columns) == list(RUN_COLUMNS)
    assert sorted(runs["method"]) == ["erm", "erm", "mixup", "mixup"]
    assert (runs["final_test_accuracy"] > 0.5).all() and (runs["device"] == "cpu").all()
    assert runs["run_id"].is_unique
    cfg = json.loads(runs["config"].iloc[0])
    assert cfg["train"]["epochs"] == 3 and cfg["seed"] in (0, 1)
    epochs = pd.read_parquet(out / "epochs")
    assert len(epochs) == 4 * 3
    assert set(epochs.groupby("run_id")["epoch"].apply(tuple)) == {(1, 2, 3)}
    assert epochs["val_accuracy"].notna().all() and epochs["test_nll"].notna().all()
    for rid in runs["run_id"]:
        assert (out / "jobs" / rid / "config.yaml").exists()
    # the best epoch is the one with the highest validation accuracy
    for _, r in runs.iterrows():
        ep = epochs[epochs.run_id == r.run_id]
        assert r.best_on == "val"
        assert ep.loc[ep.val_accuracy.idxmax(), "epoch"] == r.best_epoch
        assert ep[ep.epoch == 3].test_accuracy.iloc[0] == r.final_test_accuracy

    # running again skips every finished run
    code, text = cli("run", write(TWO), "--out", out, "--device", "cpu")
    assert code == 0 and text.count("already finished, skipped") == 4

    # compare: json is machine-readable and says which epoch rule it uses
    code, text = cli("compare", out, "--format", "json")
    assert code == 0, text
    doc = json.loads(text)
    assert doc["selection"] == "final epoch" and doc["by"] == ["method"]
    groups = {g["method"]: g for g in doc["groups"]}
    assert groups["erm"]["n"] == 2
    acc = runs[runs.method == "erm"]["final_test_accuracy"]
    assert groups["erm"]["accuracy"]["mean"] == pytest.approx(acc.mean())
    assert groups["erm"]["accuracy"]["std"] == pytest.approx(acc.std(ddof=1))
    assert sum(g["accuracy"]["best"] for g in doc["groups"]) == 1
    code, text = cli("compare", out, "--format", "markdown", "--select", "best", "--metric", "accuracy")
    assert code == 0 and "best epoch on val accuracy" in text and "| erm | 2 |" in text
    code, text = cli("compare", out, "--format", "csv", "--by", "seed")
    assert code == 0 and text.splitlines()[0].startswith("seed,n,accuracy_mean")
    code, text = cli("compare", out, "--by", "train.optimizer.lrr")
    assert code == 2 and "did you mean 'train.optimizer.lr'" in " ".join(text.split())
    code, text = cli("compare", out, "--metric", "acuracy")
    assert code == 2 and "did you mean 'accuracy'" in text


def test_same_seed_gives_identical_results_on_cpu(cli, write, tmp_path):
    p = write(TINY.replace("method: erm", "method: {name: mixup, alpha: 1.0}"))
    for d in ("a", "b"):
        assert cli("run", p, "--out", tmp_path / d, "--device", "cpu")[0] == 0
    a = pd.read_parquet(tmp_path / "a" / "epochs")
    b = pd.read_parquet(tmp_path / "b" / "epochs")
    pd.testing.assert_frame_equal(a.drop(columns="time_s"), b.drop(columns="time_s"))


def test_resume_after_interruption_matches_uninterrupted_run(cli, write, tmp_path, monkeypatch):
    p = write(TINY.replace("method: erm", "method: {name: mixup, alpha: 1.0}").replace("epochs: 3", "epochs: 4"))
    assert cli("run", p, "--out", tmp_path / "full", "--device", "cpu")[0] == 0

    real = engine.evaluate
    calls = {"n": 0}

    def crash_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] > 4:  # two splits per epoch: crash during epoch 3's evaluation
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate", crash_in_epoch_3)
    code, text = cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")
    assert code == 130 and "resume" in text
    runs = pd.read_parquet(tmp_path / "cut" / "runs")
    assert runs["status"].tolist() == ["interrupted"] and "in epoch 3" in runs["error"].iloc[0]
    assert len(pd.read_parquet(tmp_path / "cut" / "epochs")) == 2
    monkeypatch.setattr(engine, "evaluate", real)
    code, text = cli("run", p, "--out", tmp_path / "cut", "--device", "cpu")
    assert code == 0, text
    full = pd.read_parquet(tmp_path / "full" / "epochs").drop(columns="time_s")
    cut = pd.read_parquet(tmp_path / "cut" / "epochs").drop(columns="time_s")
    pd.testing.assert_frame_equal(full, cut)
    assert pd.read_parquet(tmp_path / "cut" / "runs")["status"].tolist() == ["finished"]


def test_killed_process_resumes_and_keeps_files_readable(write, tmp_path):
    """A real SIGKILL mid-run: the parquet files stay readable, and the rerun resumes and finishes."""
    p = write(TINY.replace("epochs: 3", "epochs: 40").replace("widths: [32]", "widths: [256, 256]"))
    out = tmp_path / "out"
    # --in-process: the SIGKILL hits the process that trains (a worker would be told by its parent's death
    # and record itself interrupted: tests/test_sweeps.py)
    cmd = [sys.executable, "-m", "mixcli.cli", "run", str(p), "--out", str(out), "--device", "cpu", "--in-process"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if list((out / "jobs").glob("*/checkpoint.pt")) and (out / "epochs").exists() and \
                list((out / "epochs").glob("*.parquet")):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = pd.read_parquet(out / "epochs")
    assert 1 <= len(done) < 40
    assert pd.read_parquet(out / "runs")["status"].tolist() == ["running"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    epochs = pd.read_parquet(out / "epochs")
    assert epochs["epoch"].tolist() == list(range(1, 41))
    assert pd.read_parquet(out / "runs")["status"].tolist() == ["finished"]


def test_dry_run_lists_jobs_without_training(cli, write, tmp_path):
    code, text = cli("run", write(TWO), "--out", tmp_path / "o", "--dry-run")
    assert code == 0 and "4 job(s)" in text and "mixup" in text
    assert not (tmp_path / "o").exists()


def test_unwritable_output_directory(cli, write, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, text = cli("run", write(TINY), "--out", blocker / "sub", "--device", "cpu")
    assert code == 2 and "not writable" in text and "Traceback" not in text


def test_cuda_requested_without_cuda(cli, write, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code, text = cli("run", write(TINY), "--out", tmp_path / "o", "--device", "cuda")
    assert code == 2 and "no CUDA device" in text


def test_compare_on_empty_directory(cli, tmp_path):
    code, text = cli("compare", tmp_path)
    assert code == 2 and "no results here" in text


def test_list_shows_builtins_with_defaults(cli):
    code, text = cli("list", "methods")
    assert code == 0 and "mixup" in text and "alpha=1.0" in text and "mixcli" in text
    code, text = cli("list", "datasets")
    assert code == 0 and "digits" in text
    code, text = cli("list", "modles")
    assert code == 2 and "did you mean 'models'" in text
