"""Hardening round 3 (issue 23), the claims part: a stalled holder is visible and a bounded wait leaves its
run to it; exactly once survives a deleted or replaced claims folder; a damaged claims folder is one line;
`status` survives crafted files; a full disk leaves the run failed; a killed worker's run records the epochs
it completed. Real processes throughout (a holder is a process that holds the lock)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from mixcli.execution import claims
from mixcli.execution.claims import Claim, holder
from mixcli.execution.experiment import plan
from mixcli.results.store import Store

from conftest import TINY
from sweep_helpers import install_faulty


def mixcli(*args) -> list[str]:
    return [sys.executable, "-m", "mixcli.cli", *map(str, args)]


HOLD = ("import sys, time; from pathlib import Path; from mixcli.execution.claims import Claim; "
        "c = Claim(Path(sys.argv[1]), sys.argv[2]); assert c.acquire(); print('held', flush=True); time.sleep(120)")


def hold(out: Path, rid: str) -> subprocess.Popen:
    """A process that holds ``rid``'s claim (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), rid], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def age_heartbeat(out: Path, rid: str, seconds: float) -> None:
    """Make the (stopped) holder's last heartbeat ``seconds`` old, as if it had stopped that long ago."""
    path = out / "claims" / f"{rid}.json"
    info = json.loads(path.read_text())
    info["heartbeat"] = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="seconds")
    path.write_text(json.dumps(info))


def end(proc: subprocess.Popen) -> None:
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    proc.kill()
    proc.wait()


def finished_row(store: Store, rid: str, wall: float = 10.0) -> None:
    store.write_run({"run_id": rid, "status": "finished", "seed": 0, "method": "erm", "wall_time_s": wall,
                     "config": json.dumps({"method": {"name": "erm"}, "train": {"epochs": 4}, "seed": 0})})


# ----------------------------------------------------------------------------------------- stalled holders
def test_status_names_a_stalled_holder_and_gives_no_eta(cli, tmp_path):
    out = tmp_path / "out"
    store = Store(out)
    proc = hold(out, "r-stalled")
    finished_row(store, "done-1")
    store.write_run({"run_id": "r-stalled", "status": "running", "seed": 1, "method": "erm",
                     "config": json.dumps({"method": {"name": "erm"}, "train": {"epochs": 4}, "seed": 1})})
    try:
        code, text = cli("status", out)
        assert code == 0 and "holder stalled" not in text and eta_of(text) == "00:00:10", text
        os.kill(proc.pid, signal.SIGSTOP)
        age_heartbeat(out, "r-stalled", 95)
        code, text = cli("status", out)
    finally:
        end(proc)
    assert code == 0, text
    who = f"{socket.gethostname()}:{proc.pid}"
    assert f"holder stalled for 95 s ({who})" in " ".join(text.split()) or \
        f"holder stalled for 96 s ({who})" in " ".join(text.split()), text
    assert "no ETA for this run" in text
    assert eta_of(text) == "?", text  # the sweep cannot end while the holder keeps its run


def eta_of(text: str) -> str:
    row = next(ln for ln in text.splitlines() if ln.count("│") >= 6)  # the counts row of `status`
    return row.split("│")[-2].strip()


def test_a_waiting_process_says_what_it_waits_for_and_wait_timeout_leaves_the_run(cli, write, tmp_path):
    exp = write(TINY.replace("epochs: 3", "epochs: 1"))
    out = tmp_path / "out"
    rid = plan(exp, out=out).jobs[0].run_id
    Store(out)
    proc = hold(out, rid)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        age_heartbeat(out, rid, 120)
        t0 = time.monotonic()
        code, text = cli("run", exp, "--out", out, "--device", "cpu", "--wait-timeout", "3")
        took = time.monotonic() - t0
    finally:
        end(proc)
    flat = " ".join(text.split())
    assert code == 4, text
    assert took < 30
    who = f"{socket.gethostname()}:{proc.pid}"
    assert f"{rid}: holder stalled for" in flat and f"({who})" in flat and "waiting for it" in flat, text
    assert "at most 3 s (--wait-timeout)" in flat
    assert f"left to its holder {who} (stalled for" in flat and "--wait-timeout 3" in flat
    assert "Traceback" not in text
    assert Store(out).run_row(rid) is None  # left to its holder: nothing trained, nothing recorded
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--wait-timeout", "3")  # holder gone
    assert code == 0 and Store(out).run_row(rid)["status"] == "finished", text


def test_a_bad_wait_timeout_is_one_line(cli, write, tmp_path):
    code, text = cli("run", write(TINY), "--out", tmp_path / "out", "--wait-timeout", "-1")
    assert code == 2 and "--wait-timeout -1" in text and "Traceback" not in text
    assert not (tmp_path / "out" / "runs").exists()


# ------------------------------------------------------------- exactly once with the claims folder deleted
SLOW = TINY.replace("method: erm", "method: {name: slow, at: 1}").replace("epochs: 3", "epochs: 8")


def _wait_for(cond, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.1)
    assert cond()


def rm_rf(path: Path) -> None:
    """`rm -rf path`, as a cleanup script does it (again when a holder wrote into it meanwhile)."""
    for _ in range(20):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            continue  # "directory not empty": a file appeared while it was emptied


def _trained_once(out: Path, epochs: int = 8) -> None:
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "finished", runs.T
    assert runs.iloc[0]["attempts"] == 1
    assert pd.read_parquet(out / "epochs")["epoch"].tolist() == list(range(1, epochs + 1))


def test_deleting_the_claims_folder_while_a_run_trains_does_not_train_it_twice(write, tmp_path, monkeypatch):
    """`rm -rf OUT/claims` while A trains, then a second `mixcli run` B: A puts its lock back, B waits and
    finds the run finished (one training, attempts 1, the epochs once)."""
    install_faulty(tmp_path / "plug", monkeypatch)
    exp, out = write(SLOW.replace("epochs: 8", "epochs: 25")), tmp_path / "out"
    cmd = mixcli("run", exp, "--out", out, "--device", "cpu")
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: list((out / "epochs").glob("*.parquet")))
    rm_rf(out / "claims")
    b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_a, log_b = a.communicate(timeout=240)[0], b.communicate(timeout=240)[0]
    assert a.returncode == 0 and b.returncode == 0, log_a + log_b
    flat = " ".join(log_b.split())
    assert "✓" in log_a and "✓" not in log_b, log_b
    assert f"held by {socket.gethostname()}:" in flat and "waiting for it" in flat, flat  # B waited for A
    assert "1 run(s) were trained by another mixcli process" in flat, flat
    _trained_once(out, 25)


def test_a_holder_puts_its_lock_back_and_a_late_claim_is_refused(tmp_path):
    """The protocol alone (fast): a holder process whose claims folder is deleted puts a lock of its own
    back within a few seconds; a claim taken right after the deletion, for a run that had started, waits
    for it and is refused."""
    out = tmp_path / "out"
    Store(out)
    proc = hold(out, "r1")
    try:
        (out / "runs" / "r1.parquet").write_bytes(b"")  # the run had started (its row exists)
        for _ in range(2):
            rm_rf(out / "claims")
            t0 = time.monotonic()
            assert not Claim(out, "r1").acquire()
            assert time.monotonic() - t0 < claims.SETTLE_S + 1
            assert holder(out, "r1")["pid"] == proc.pid
    finally:
        end(proc)
    assert Claim(out, "r1").acquire()  # the holder is gone: free again


def test_a_process_that_claims_a_run_after_its_claims_folder_went_gives_it_up(write, tmp_path, monkeypatch):
    """The contest itself, with a real holder A (a worker of `mixcli run`) and a claim B of this process:
    - the folder replaced while A is stopped: B takes the run (nobody answers), and gives it up once A runs
      again and puts its lock back (B.lost), before recording anything;
    - the folder deleted while A runs: B's claim settles, sees A's lock come back and is refused.
    A's run is trained once (attempts 1, every epoch once)."""
    install_faulty(tmp_path / "plug", monkeypatch)
    exp, out = write(SLOW.replace("epochs: 8", "epochs: 12")), tmp_path / "out"
    rid = plan(exp, out=out).jobs[0].run_id
    a = subprocess.Popen(mixcli("run", exp, "--out", out, "--device", "cpu"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: list((out / "epochs").glob("*.parquet")))
        worker = json.loads((out / "claims" / f"{rid}.json").read_text())["pid"]
        os.kill(worker, signal.SIGSTOP)
        os.rename(out / "claims", out / "claims.old")
        (out / "claims").mkdir()
        b = Claim(out, rid)
        t0 = time.monotonic()
        assert b.acquire()  # A is stopped: nobody puts a lock back while B settles
        assert time.monotonic() - t0 >= claims.SETTLE_S - 0.5  # (it did wait for a senior holder)
        assert b.lost is None and holder(out, rid)["pid"] == os.getpid()
        os.kill(worker, signal.SIGCONT)
        _wait_for(lambda: b.lost is not None, timeout=30)
        assert f":{worker}, which took it first" in b.lost
        b.release()
        assert holder(out, rid)["pid"] == worker  # B left A's holder file alone
        rm_rf(out / "claims")
        c = Claim(out, rid)
        assert not c.acquire()
        log = a.communicate(timeout=240)[0]
    finally:
        os.kill(a.pid, signal.SIGCONT) if a.poll() is None else None
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, log
    _trained_once(out, 12)


# ----------------------------------------------------------------------------- a damaged claims folder
def test_a_damaged_claims_folder_is_one_line_and_finished_runs_stay(cli, write, tmp_path):
    exp, out = write(TINY.replace("epochs: 3", "epochs: 1")), tmp_path / "out"
    assert cli("run", exp, "--out", out, "--device", "cpu")[0] == 0
    first = pd.read_parquet(out / "runs")
    two = ["--set", "seeds=[0, 1]"]
    new = plan(exp, ["seeds=[0, 1]"], out=out).jobs[1].run_id
    shutil.rmtree(out / "claims")
    (out / "claims").write_text("not a folder")
    code, text = cli("run", exp, "--out", out, "--device", "cpu", *two)
    assert code == 2 and "Traceback" not in text, text
    line = next(ln for ln in text.splitlines() if ln.startswith("error:"))
    assert f"{out / 'claims'}: not a folder" in " ".join(text.split()) and "Remove" in line, text
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs"), first)  # nothing lost, nothing half-written
    (out / "claims").unlink()
    (out / "claims").mkdir()
    (out / "claims" / f"{new}.lock").mkdir()
    code, text = cli("run", exp, "--out", out, "--device", "cpu", *two)
    assert code == 2 and "Traceback" not in text and "not a plain file" in text, text
    assert f"Remove {out / 'claims' / (new + '.lock')}" in " ".join(text.split())
    pd.testing.assert_frame_equal(pd.read_parquet(out / "runs"), first)


def test_a_claims_folder_broken_while_a_run_trains_still_records_the_run(write, tmp_path, monkeypatch):
    """`OUT/claims` replaced by a file while the first of two runs trains: that run still finishes and is
    recorded; the second cannot be claimed, which is one line (exit code 2), no traceback."""
    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(SLOW.replace("epochs: 8", "epochs: 5").replace("seeds: [0]", "seeds: [0, 1]"))
    out = tmp_path / "out"
    proc = subprocess.Popen(mixcli("run", exp, "--out", out, "--device", "cpu", "--in-process"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: list((out / "epochs").glob("*.parquet")))
    rm_rf(out / "claims")
    (out / "claims").write_text("not a folder")
    log = proc.communicate(timeout=240)[0]
    runs = pd.read_parquet(out / "runs")
    assert runs["status"].tolist() == ["finished"] and runs.iloc[0]["attempts"] == 1, runs.T
    assert proc.returncode == 2, log
    assert "Traceback" not in log and "Exception in thread" not in log, log
    assert f"{out / 'claims'}: not a folder" in " ".join(log.split())
    assert pd.read_parquet(out / "epochs")["epoch"].tolist() == [1, 2, 3, 4, 5]


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (unshare -m) "
                                 "for a real read-only folder / a real full disk")


@needs_mount
def test_a_read_only_claims_folder_is_one_line(write, tmp_path):
    """A really read-only claims folder (a read-only bind mount: root cannot write there either)."""
    exp, out = write(TINY.replace("epochs: 3", "epochs: 1")), tmp_path / "out"
    Store(out)
    (out / "claims").mkdir()
    script = f"""set -e
mount --bind {out / 'claims'} {out / 'claims'}
mount -o remount,bind,ro {out / 'claims'}
{' '.join(mixcli('run', exp, '--out', out, '--device', 'cpu', '--in-process'))} > {tmp_path / 'log'} 2>&1 || echo $? > {tmp_path / 'rc'}
"""
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=300)
    text = (tmp_path / "log").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", text
    assert "Traceback" not in text
    flat = " ".join(text.split())
    assert f"{out / 'claims'}: cannot hold a new lock file (Read-only file system)" in flat, text
    assert "Make" in flat and "writable" in flat


# ------------------------------------------------------------------------------------- crafted files
def craft(out: Path, row: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row]), out / "runs" / f"{row['run_id']}.parquet")


def test_status_survives_crafted_runs_rows_and_holder_files(cli, tmp_path):
    out = tmp_path / "out"
    store = Store(out)
    finished_row(store, "good-1")
    crafted = {
        "not-json": {"config": "{nope"},
        "nested": {"config": "[" * 200_000 + "]" * 200_000},
        "a-list": {"config": "[1, 2]"},
        "str-epochs": {"config": "{}", "epochs": "many", "wall_time_s": "soon"},
        "odd-status": {"config": "{}", "status": "\x1b[2Jhacked"},
    }
    for rid, cols in crafted.items():  # written as a hostile writer would: any types, no schema
        craft(out, {"run_id": rid, "status": "finished", "seed": 0, "method": "erm", **cols})
    craft(out, {"run_id": "bad-error", "status": "failed", "seed": 0, "method": "erm", "config": "{}",
                "error": "boom\x1b]0;owned\x07 \x1b[31mred"})
    holders = {"h-notjson": "{{{", "h-types": json.dumps({"host": ["x"], "pid": "12", "epoch": "3", "epochs": {},
                                                          "heartbeat": 7, "last": "x"}),
               "h-huge": '{"host": "h\\u001b[5m", "pid": 1e400, "epoch": ' + "9" * 500 + ', "epochs": -4, '
                         '"heartbeat": "9999-12-31T23:59:59+00:00"}',
               "h-ok": None}
    held = []
    try:
        for rid, content in holders.items():
            c = Claim(out, rid)
            assert c.acquire()
            held.append(c)
            store.write_run({"run_id": rid, "status": "running", "seed": 0, "method": "erm",
                             "config": json.dumps({"train": {"epochs": "ten"}} if rid == "h-ok" else {})})
            if content is not None:
                (out / "claims" / f"{rid}.json").write_text(content)
        code, text = cli("status", out)
    finally:
        for c in held:
            c.release()
    assert code == 0 and "Traceback" not in text, text
    assert "\x1b" not in text and "\x07" not in text
    lines = text.splitlines()
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    flat = " ".join(text.split())
    for rid in crafted:
        assert sum(f"{rid}.parquet" in w for w in warnings) == 1, (rid, warnings)
    for rid in ("h-notjson", "h-types", "h-huge"):
        assert sum(f"{rid}.json" in w for w in warnings) == 1, (rid, warnings)
    assert not any("good-1" in w or "h-ok" in w or "bad-error" in w for w in warnings)
    assert "not JSON" in flat and "bad value of" in flat
    assert "boom" in flat and "red" in flat  # the failed run shown, its escapes stripped
    for rid in ("h-notjson", "h-types", "h-huge", "h-ok"):
        assert rid in flat  # every running run listed


# -------------------------------------------------------------------------------------- full disk
FILLER = '''
"""A method that fills the disk of its output folder at epoch ``at`` (once), as another user's job would."""
import errno, os
from pathlib import Path
from mixcli.api import Method, MixOutput


class Filler(Method):
    def __init__(self, at: int = 2, path: str = "", marker: str = ""):
        self.at, self.path, self.marker = at, path, marker

    def __call__(self, model, batch, ctx):
        if ctx.epoch >= self.at and not Path(self.marker).exists():
            Path(self.marker).write_text("filled")
            for name, chunk in ((self.path, 65536), (self.path + ".tail", 1)):  # (the last bytes too)
                with open(name, "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(b"x" * chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC
        return MixOutput.unmixed(model(batch.x), batch.y)
'''


@needs_mount
@pytest.mark.parametrize("where", ["--in-process", "--jobs=1"])
def test_a_full_disk_leaves_the_run_failed_and_retry_failed_retrains_it(write, tmp_path, monkeypatch, where):
    """A real full disk (a 16 MB tmpfs that a job fills at epoch 2) in this process and in a worker: the run
    is recorded failed with the reason, and once space is freed the printed --retry-failed trains it."""
    plug = tmp_path / "plug"
    install_faulty(plug, monkeypatch)
    (plug / "mixcli_filler.py").write_text(textwrap.dedent(FILLER))
    with open(next(plug.glob("*.dist-info")) / "entry_points.txt", "a") as f:
        f.write("filler = mixcli_filler:Filler\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    exp = write(TINY.replace("method: erm", f"method: {{name: filler, at: 2, path: {disk / 'fill'}, "
                             f"marker: {tmp_path / 'filled'}}}").replace("epochs: 3", "epochs: 4"))
    run = " ".join(mixcli("run", exp, "--out", out, "--device", "cpu", where))
    script = f"""mount -t tmpfs -o size=16m none {disk}
{run} > {tmp_path / 'log1'} 2>&1; echo $? > {tmp_path / 'rc1'}
cp -r {out} {tmp_path / 'after_full'}
rm -f {disk / 'fill'} {disk / 'fill'}.tail
{run} --retry-failed > {tmp_path / 'log2'} 2>&1; echo $? > {tmp_path / 'rc2'}
cp -r {out} {tmp_path / 'after_retry'}
"""
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=500, env={**os.environ})
    log1 = (tmp_path / "log1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1", log1
    row = Store(tmp_path / "after_full").run_row(plan(exp, out=out).jobs[0].run_id)
    assert row["status"] == "failed", (row, log1)
    assert "no space left on device" in row["error"].lower() or "No space left" in row["error"], row["error"]
    assert row["epochs"] >= 1
    assert "--retry-failed" in log1
    log2 = (tmp_path / "log2").read_text()
    assert (tmp_path / "rc2").read_text().strip() == "0", log2
    runs = pd.read_parquet(tmp_path / "after_retry" / "runs")
    assert runs.iloc[0]["status"] == "finished" and runs.iloc[0]["attempts"] == 2
    assert not list((tmp_path / "after_retry" / "claims").glob(".*.reserve"))  # given back at release


# ------------------------------------------------------------------------------------ a killed worker
def test_a_killed_workers_run_records_the_epochs_it_completed(cli, write, tmp_path, monkeypatch):
    import torch

    install_faulty(tmp_path / "plug", monkeypatch)
    exp = write(TINY.replace("method: erm", "method: {name: killer, at: 3}").replace("epochs: 3", "epochs: 5"))
    out = tmp_path / "out"
    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--jobs", "1")
    assert code == 1, text
    row = pd.read_parquet(out / "runs").iloc[0]
    rid = row["run_id"]
    ckpt = torch.load(Store(out).checkpoint_path(rid), weights_only=True)
    assert row["status"] == "failed" and "killed by SIGKILL" in row["error"]
    assert row["epochs"] == ckpt["epoch"] >= 1, row  # the epochs completed (on disk), not 0
    assert f"(in epoch {ckpt['epoch'] + 1})" in row["error"]
