"""Issue 22: a fixed per-job thread count (the same numbers on every machine), jobs in worker processes by
default (a native crash fails one job, not the sweep), the thread count recorded and checked on resume."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from mixcli.training import engine

from conftest import TINY
from sweep_helpers import install_faulty

TWO = TINY.replace("seeds: [0]", "seeds: [0, 1]")


def mixcli(*args) -> list[str]:
    return [sys.executable, "-m", "mixcli.cli", *map(str, args)]


def epochs_of(out) -> pd.DataFrame:
    df = pd.read_parquet(out / "epochs").drop(columns="time_s")
    return df.sort_values(["run_id", "epoch"]).reset_index(drop=True)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and sched_setaffinity")
def test_the_defaults_give_the_same_numbers_on_one_core_and_on_all_cores(write, tmp_path):
    exp = write(TWO)
    every = sorted(os.sched_getaffinity(0))
    for name, cpus in (("one", every[:1]), ("all", every)):
        r = subprocess.run(mixcli("run", exp, "--out", tmp_path / name, "--device", "cpu"), capture_output=True,
                           text=True, timeout=300, preexec_fn=lambda c=cpus: os.sched_setaffinity(0, c))
        assert r.returncode == 0, r.stdout + r.stderr
    pd.testing.assert_frame_equal(epochs_of(tmp_path / "one"), epochs_of(tmp_path / "all"))
    one, full = (pd.read_parquet(tmp_path / n / "runs") for n in ("one", "all"))
    assert set(one["threads"]) == set(full["threads"]) == {1}
    assert "2 job(s) on cpu, 2 at once" in r.stdout  # --jobs defaults to the cores (here 2, for 2 jobs)
    assert full["pid"].nunique() == 2  # two worker processes


def test_a_native_crash_in_one_job_fails_that_job_and_the_sweep_goes_on(write, tmp_path, monkeypatch):
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(TINY.replace("method: erm", "method: erm\ngrid:\n  method: [{name: crasher, at: 2}, erm, "
                             "{name: mixup, alpha: 0.2}]"))
    out = tmp_path / "out"
    r = subprocess.run(mixcli("run", exp, "--out", out, "--device", "cpu", "--jobs", "1"), capture_output=True,
                       text=True, timeout=300)  # one worker: the crashed worker is replaced for the next jobs
    assert r.returncode == 1, r.stdout + r.stderr
    runs = pd.read_parquet(out / "runs").set_index("method")
    assert runs.loc["crasher", "status"] == "failed"
    assert "worker process training it died: killed by SIGSEGV" in runs.loc["crasher", "error"]
    assert (runs.loc[["erm", "mixup"], "status"] == "finished").all()
    assert runs.loc["erm", "pid"] != runs.loc["crasher", "pid"]


def test_in_process_runs_here_and_records_its_threads(cli, write, tmp_path):
    out = tmp_path / "out"
    code, text = cli("run", write(TINY), "--out", out, "--device", "cpu", "--in-process", "--threads", "2")
    assert code == 0, text
    runs = pd.read_parquet(out / "runs")
    assert runs["pid"].tolist() == [os.getpid()] and runs["threads"].tolist() == [2]
    code, text = cli("show", write(TINY), "--threads", "2")
    assert code == 0 and text.splitlines()[0].endswith("(threads: 2)")
    code, text = cli("show", write(TINY))
    assert code == 0 and text.splitlines()[0].endswith("(threads: 1)")


@pytest.mark.parametrize("args, msg", [
    (["--in-process", "--jobs", "2"], "--in-process runs one job at a time in this process; drop --jobs 2"),
    (["--in-process", "--executor", "ray"], "--in-process: the jobs run in this process, not as Ray tasks"),
])
def test_in_process_conflicts(cli, write, tmp_path, args, msg):
    code, text = cli("run", write(TINY), "--out", tmp_path / "o", "--device", "cpu", *args)
    assert code == 2 and msg in " ".join(text.split()) and "Traceback" not in text
    assert not (tmp_path / "o" / "runs").exists() or not list((tmp_path / "o" / "runs").glob("*.parquet"))


def test_another_thread_count_on_resume_or_reuse_warns(cli, write, tmp_path, monkeypatch):
    exp, out = write(TINY), tmp_path / "out"
    real = engine.evaluate
    calls = {"n": 0}

    def interrupt_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "evaluate", interrupt_in_epoch_2)
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--threads", "2")
    assert code == 130, text
    monkeypatch.setattr(engine, "evaluate", real)
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    flat = " ".join(text.split())
    assert code == 0, text
    assert "1 run(s) were trained with another --threads than this sweep's 1" in flat
    assert "interrupted, resumes with --threads 1 (pass --threads 2 to keep its numbers)" in flat
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--threads", "3")
    flat = " ".join(text.split())
    assert code == 0 and "--threads 1 (finished, reused as it is)" in flat
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0 and "another --threads" not in text
