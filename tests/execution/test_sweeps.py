"""Sweeps: parallel workers, failure isolation, claims shared by concurrent processes, the result store
under many writers, `mixcli status`, and the Ray executor."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mixcli.execution.claims import Claim, holder
from mixcli.results.store import SCHEMAS, Store

from conftest import TINY
from sweep_helpers import install_faulty

GRID = TINY.replace("method: erm", "method: erm\ngrid:\n  method: [erm, {name: mixup, alpha: 0.4}]").replace(
    "seeds: [0]", "seeds: [0, 1, 2]")


def epochs_of(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "epochs").drop(columns="time_s")
    return df.sort_values(["run_id", "epoch"]).reset_index(drop=True)


def mixcli(*args, **kw) -> list[str]:
    return [sys.executable, "-m", "mixcli.cli", *map(str, args)]


# ------------------------------------------------------------------------------------------------ workers
def test_two_workers_give_bit_identical_numbers(cli, write, tmp_path):
    p = write(GRID)
    code, one = cli("run", p, "--out", tmp_path / "one", "--device", "cpu", "--threads", "1")
    assert code == 0, one
    code, two = cli("run", p, "--out", tmp_path / "two", "--device", "cpu", "--jobs", "2")
    assert code == 0, two
    assert "6 job(s) on cpu, 2 at once" in two
    pd.testing.assert_frame_equal(epochs_of(tmp_path / "one"), epochs_of(tmp_path / "two"))
    runs = pd.read_parquet(tmp_path / "two" / "runs")
    assert set(runs["status"]) == {"finished"} and set(runs["attempts"]) == {1}
    assert runs["pid"].nunique() == 2  # two worker processes trained them


def test_bad_options_of_the_executor(cli, write, tmp_path, monkeypatch):
    p = write(TINY)
    for args, msg in [(["--jobs", "0"], "--jobs 0: expected a positive"),
                      (["--threads", "0"], "--threads 0"),
                      (["--gpus", "0"], "--gpus 0: the jobs run on the CPU"),
                      (["--executor", "k8s"], "--executor k8s: expected local, ray or slurm"),
                      (["--ray-address", "x:1"], "--ray-address is only used with --executor ray")]:
        code, text = cli("run", p, "--out", tmp_path / "o", "--device", "cpu", *args)
        assert code == 2 and msg in text and "Traceback" not in text, (args, text)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, text = cli("run", p, "--out", tmp_path / "o", "--device", "cpu", "--executor", "ray")
    assert code == 2 and 'pip install "mixcli[ray]"' in text and len(text.strip().splitlines()) == 1
    assert not list((tmp_path / "o" / "runs").glob("*.parquet"))


# -------------------------------------------------------------------------------------- failure isolation
FAULTS = TINY.replace("method: erm", """method: erm
grid:
  - {method: [erm], train.optimizer.lr: [0.05, 1.0e+6]}
  - {method: [{name: raiser, at: 2}, {name: exiter, at: 2}, {name: mixup, alpha: 0.2}]}""")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_failing_jobs_are_recorded_and_the_sweep_goes_on(cli, write, tmp_path, monkeypatch, jobs):
    install_faulty(tmp_path / "plug", monkeypatch)
    out = tmp_path / "out"
    code, text = cli("run", write(FAULTS), "--out", out, "--device", "cpu", "--jobs", jobs)
    flat = " ".join(text.split())
    assert code == 1, text
    runs = pd.read_parquet(out / "runs").set_index("method")
    by_lr = pd.read_parquet(out / "runs").assign(lr=lambda d: [json.loads(c)["train"]["optimizer"]["lr"]
                                                              for c in d["config"]])
    assert by_lr[by_lr.method == "erm"].set_index("lr")["status"].to_dict() == {0.05: "finished", 1e6: "failed"}
    nan = by_lr[(by_lr.method == "erm") & (by_lr.lr == 1e6)].iloc[0]
    assert "training loss became nan in epoch 1" in nan["error"]
    assert runs.loc["mixup", "status"] == "finished" and runs.loc["mixup", "epochs"] == 3
    raiser, exiter = runs.loc["raiser"], runs.loc["exiter"]
    assert raiser["status"] == "failed" and "the faulty plugin gave up (in epoch 2)" in raiser["error"]
    assert raiser["error_plugin"] == "method 'raiser' (mixcli-faulty)" and raiser["epochs"] == 1
    assert exiter["status"] == "failed" and "sys.exit(3)" in exiter["error"] and exiter["epochs"] == 1
    assert exiter["error_plugin"] == "method 'exiter' (mixcli-faulty)"
    assert "3 run(s) failed" in flat and "--retry-failed" in flat and "Traceback" not in text
    assert (out / "jobs" / raiser["run_id"] / "traceback.txt").read_text().count("PluginError") >= 1
    # a plain rerun leaves the failed runs alone; --retry-failed reruns exactly them
    before = pd.read_parquet(out / "runs").set_index("run_id")
    code, text = cli("run", write(FAULTS), "--out", out, "--device", "cpu")
    assert code == 1 and "not retried" in text
    code, text = cli("run", write(FAULTS), "--out", out, "--device", "cpu", "--retry-failed")
    assert code == 1 and "3 job(s)" in text
    after = pd.read_parquet(out / "runs").set_index("run_id")
    retried = after.index[after["attempts"] == 2].tolist()
    assert sorted(retried) == sorted(before.index[before["status"] == "failed"])
    assert (after.loc[before["status"] == "finished", "finished_at"]
            == before.loc[before["status"] == "finished", "finished_at"]).all()


def test_a_dying_worker_is_recorded_failed_and_replaced(cli, write, tmp_path, monkeypatch):
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = TINY.replace("method: erm", "method: erm\ngrid:\n  method: [{name: killer, at: 2}, erm, "
                       "{name: mixup, alpha: 0.2}]")
    out = tmp_path / "out"
    code, text = cli("run", write(exp), "--out", out, "--device", "cpu", "--jobs", "2")
    assert code == 1, text
    runs = pd.read_parquet(out / "runs").set_index("method")
    assert runs.loc["killer", "status"] == "failed"
    assert "worker process training it died: killed by SIGKILL" in runs.loc["killer", "error"]
    assert (runs.loc[["erm", "mixup"], "status"] == "finished").all()


# ------------------------------------------------------------------------- claims and concurrent processes
def test_a_claim_excludes_other_holders_until_released(tmp_path):
    a, b = Claim(tmp_path, "r1"), Claim(tmp_path, "r1")
    assert a.acquire() and not b.acquire()
    h = holder(tmp_path, "r1")
    assert h["pid"] == os.getpid() and h["host"]
    a.release()
    assert holder(tmp_path, "r1") is None and b.acquire()
    b.release()


def test_a_claim_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from pathlib import Path; from mixcli.execution.claims import Claim; "
            f"c = Claim(Path({str(tmp_path)!r}), 'r1'); assert c.acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert holder(tmp_path, "r1")["pid"] == proc.pid and not Claim(tmp_path, "r1").acquire()
    proc.kill()
    proc.wait()
    assert holder(tmp_path, "r1") is None and Claim(tmp_path, "r1").acquire()


def test_concurrent_processes_with_kills_train_every_run_exactly_once(write, tmp_path):
    """4 processes on one directory, two of them SIGKILLed at random moments, then one more run: every run
    finished, none lost, numbers equal to an uninterrupted run, and no run was trained by two live
    processes (each kill cuts at most one training attempt short)."""
    exp = write(GRID.replace("epochs: 3", "epochs: 8"))
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert subprocess.run(mixcli("run", exp, "--out", ref, "--device", "cpu", "--threads", "1"),
                          capture_output=True).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = mixcli("run", exp, "--out", out, "--device", "cpu", "--threads", "1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(4)]
    rng = random.Random(0)
    time.sleep(rng.uniform(3, 5))
    killed = rng.sample(procs, 2)
    for p in killed:
        p.send_signal(signal.SIGKILL)
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p in killed or p.returncode == 0, log
    for f in ("runs", "epochs"):
        pd.read_parquet(out / f)  # readable after the kills
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == 6 and set(runs["status"]) == {"finished"}
    assert runs["attempts"].sum() <= 6 + len(killed)
    pd.testing.assert_frame_equal(epochs_of(ref), epochs_of(out))
    trained = sum(log.count("✓") for p, log in zip(procs, logs) if p not in killed)
    skipped = final.stdout.count("already finished, skipped")
    assert trained <= 6 and skipped <= 6


def test_sigterm_records_the_run_interrupted(write, tmp_path, monkeypatch):
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(TINY.replace("method: erm", "method: {name: slow, at: 1}").replace("epochs: 3", "epochs: 30"))
    out = tmp_path / "out"
    proc = subprocess.Popen(mixcli("run", exp, "--out", out, "--device", "cpu"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "epochs").glob("*.parquet")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, text
    row = pd.read_parquet(out / "runs").iloc[0]
    assert row["status"] == "interrupted" and "resumes it" in row["error"]


# ----------------------------------------------------------------------------------- store, status, repair
def test_status_and_read_parquet_on_a_directory_mixing_every_status(cli, write, tmp_path, monkeypatch):
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(TINY.replace("method: erm", "method: erm\ngrid:\n  method: [erm, {name: raiser, at: 1}]"))
    out = tmp_path / "out"
    assert cli("run", exp, "--out", out, "--device", "cpu")[0] == 1
    store = Store(out)
    # a run whose holder died mid-run (row says running, nobody holds its claim) and one interrupted
    store.write_run({"run_id": "ghost", "status": "running", "seed": 0, "method": "erm", "config": "{}"})
    store.write_run({"run_id": "stopped", "status": "interrupted", "seed": 0, "method": "erm", "config": "{}"})
    runs = pd.read_parquet(out / "runs")
    assert sorted(runs["status"]) == ["failed", "finished", "interrupted", "running"]
    for table, schema in SCHEMAS.items():
        for f in (out / table).glob("*.parquet"):
            import pyarrow.parquet as pq
            assert pq.read_schema(f).remove_metadata() == schema, f
    code, text = cli("status", out)
    assert code == 0, text
    flat = " ".join(text.split())
    assert "ghost" in flat and "stopped" in flat and "the faulty plugin gave up" in flat
    assert _counts(text) == [1, 0, 2, 1, 0]  # finished, running, interrupted (ghost: holder gone), failed
    with Claim(out, "ghost") as claim:  # now a live process holds it
        assert claim.acquire()
        code, text = cli("status", out)
        assert _counts(text) == [1, 1, 1, 1, 0]
        assert f":{os.getpid()}" in " ".join(text.split())
    code, text = cli("status", exp, "--set", "seeds=[0,1]", "--out", out)
    assert code == 0 and "4 job(s)" in " ".join(text.split())
    assert _counts(text) == [1, 0, 0, 1, 2]  # the experiment's own 4 jobs: 2 have no record yet


def _counts(text: str) -> list[int]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) == 6 and all(c.isdigit() for c in cells[:5]):
            return [int(c) for c in cells[:5]]
    return []


def test_damaged_result_files_are_skipped_then_rebuilt(cli, write, tmp_path):
    out = tmp_path / "out"
    exp = write(GRID.replace("seeds: [0, 1, 2]", "seeds: [0, 1]"))
    assert cli("run", exp, "--out", out, "--device", "cpu")[0] == 0
    good_runs, good_epochs = pd.read_parquet(out / "runs"), epochs_of(out)
    rid = good_runs["run_id"].iloc[0]
    ep = out / "epochs" / f"{rid}.parquet"
    ep.write_bytes(ep.read_bytes()[:100])                                  # truncated
    (out / "runs" / f"{good_runs['run_id'].iloc[1]}.parquet").write_bytes(b"garbage")
    (out / "runs" / f".{rid}.parquet.abc123.tmp").write_bytes(b"half")     # left by a kill mid-write
    os.chmod(out / "runs", 0o755)
    code, text = cli("compare", out)
    assert code == 0 and "skipped damaged result file" in text and "Traceback" not in text
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    assert "was damaged; rebuilt from the run's checkpoint" in text
    assert not list((out / "runs").glob(".*.tmp"))
    pd.testing.assert_frame_equal(epochs_of(out), good_epochs)
    after = pd.read_parquet(out / "runs").set_index("run_id").sort_index()
    before = good_runs.set_index("run_id").sort_index()
    cols = ["status", "final_test_accuracy", "best_epoch", "attempts", "epochs"]
    pd.testing.assert_frame_equal(after[cols], before[cols])


def test_result_files_follow_the_umask(cli, write, tmp_path):
    out = tmp_path / "out"
    assert cli("run", write(TINY), "--out", out, "--device", "cpu")[0] == 0
    old = os.umask(0)
    os.umask(old)
    for f in list((out / "runs").glob("*.parquet")) + list((out / "jobs").glob("*/checkpoint.pt")):
        assert f.stat().st_mode & 0o777 == 0o666 & ~old, f


# ------------------------------------------------------------------------------------------------------ Ray
def test_ray_executor_matches_local_and_retries_a_killed_task(write, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    install_faulty(tmp_path / "plug", monkeypatch)
    marker = tmp_path / "killed-once"
    exp = write(TINY.replace("method: erm", f"method: erm\ngrid:\n  method: [erm, {{name: killer, at: 2, "
                             f"marker: '{marker}'}}]").replace("epochs: 3", "epochs: 4"))
    local, rayd = tmp_path / "local", tmp_path / "ray"
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    marker.write_text("disarmed")  # the local reference run never fires
    r = subprocess.run(mixcli("run", exp, "--out", local, "--device", "cpu", "--threads", "1"),
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    marker.unlink()
    r = subprocess.run(mixcli("run", exp, "--out", rayd, "--device", "cpu", "--executor", "ray", "--threads", "1"),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()  # the killer did kill its Ray worker once
    runs = pd.read_parquet(rayd / "runs").set_index("method")
    assert (runs["status"] == "finished").all()
    assert runs.loc["killer", "attempts"] == 2 and runs.loc["erm", "attempts"] == 1
    pd.testing.assert_frame_equal(epochs_of(local), epochs_of(rayd))


def test_workers_die_with_their_sweep_and_the_next_run_resumes(write, tmp_path, monkeypatch):
    """SIGKILL of a `mixcli run --jobs 2`: its workers stop too (recording their runs interrupted), and
    the next run resumes both runs from their checkpoints."""
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(TINY.replace("method: erm", "method: {name: slow, at: 1}").replace("epochs: 3", "epochs: 12")
                .replace("seeds: [0]", "seeds: [0, 1]"))
    out = tmp_path / "out"
    proc = subprocess.Popen(mixcli("run", exp, "--out", out, "--device", "cpu", "--jobs", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "epochs").glob("*.parquet"))) < 2:
        time.sleep(0.1)
    holders = [json.loads(p.read_text())["pid"] for p in (out / "claims").glob("*.json")]
    assert len(holders) == 2 and proc.pid not in holders
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in holders):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in holders)
    runs = pd.read_parquet(out / "runs")
    assert set(runs["status"]) == {"interrupted"}
    r = subprocess.run(mixcli("run", exp, "--out", out, "--device", "cpu", "--jobs", "2"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = pd.read_parquet(out / "runs")
    assert set(runs["status"]) == {"finished"} and set(runs["attempts"]) == {2}
    assert pd.read_parquet(out / "epochs").groupby("run_id")["epoch"].apply(list).map(
        lambda e: e == list(range(1, 13))).all()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its new parent) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_full_disk_is_reported_as_such_and_leaves_no_temporary(tmp_path, monkeypatch):
    """torch.save reports a full disk as an obscure RuntimeError; the store names the disk and the file."""
    import shutil as sh
    from collections import namedtuple

    from mixcli.results.store import atomic_write

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10 << 20, 10 << 20, 0))

    def write(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 334080 vs 334032")

    with pytest.raises(OSError, match="no space left on device") as info:
        atomic_write(tmp_path / "checkpoint.pt", write)
    assert info.value.filename == str(tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []
