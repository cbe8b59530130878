"""Every reader of result files (compare, curves, reliability, export, inspect) survives a crafted file in
OUT: one warning line per bad file naming it, the rest shown, exit 0 while anything usable remains (2 when
nothing does), never a traceback, and no terminal escape sequence read from disk reaches the screen."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from crafted_helpers import READERS, invoke, make_out, reader_args, run_id, sane

from mixcli.results.store import arrow_table

GOOD = run_id("erm", 0)
DEEP = 100_000


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_out(tmp_path_factory.mktemp("base") / "out")


@pytest.fixture
def out(base, tmp_path):
    return shutil.copytree(base, tmp_path / "out", symlinks=True)


def _row(out, **over) -> dict:
    row = pq.read_table(out / "runs" / f"{GOOD}.parquet").to_pylist()[0]
    row.update({"run_id": "evil", **over})
    return row


def _write(path, rows, typed=None) -> None:
    t = arrow_table(rows, typed) if typed else pa.Table.from_pylist(rows)
    pq.write_table(t, path)


def _runs(**over):
    return lambda out, name="evil": _write(out / "runs" / f"{name}.parquet", [_row(out, **{"run_id": name, **over})])


def _epochs(rows):
    return lambda out: _write(out / "epochs" / f"{GOOD}.parquet", rows)


def _bytes(data):
    return lambda out, name="evil": (out / "runs" / f"{name}.parquet").write_bytes(data)


def _truncated(out, name="evil"):
    (out / "runs" / f"{name}.parquet").write_bytes((out / "runs" / f"{GOOD}.parquet").read_bytes()[:300])


def _calibration(text):
    return lambda out: (out / "jobs" / GOOD / "calibration.json").write_text(text)


def _calibration_pipe(out):
    os.remove(out / "jobs" / GOOD / "calibration.json")
    os.mkfifo(out / "jobs" / GOOD / "calibration.json")


RUNS_FILES = {  # name -> plant(out, file stem): a crafted runs/<stem>.parquet
    "config-nested-100k-mapping": _runs(config='{"a":' * DEEP + "1" + "}" * DEEP),
    "config-nested-100k-list": _runs(config="[" * DEEP + "]" * DEEP),
    "config-nested-40-levels": _runs(config='{"a":' * 40 + "1" + "}" * 40),
    "config-not-json": _runs(config="{not json"),
    "config-a-list": _runs(config="[1, 2]"),
    "config-huge": _runs(config=json.dumps({"a": "x" * 2_000_000})),
    "epochs-string": _runs(epochs="abc"),
    "epochs-negative": _runs(epochs=-5),
    "epochs-fraction": _runs(epochs=2.5),
    "seed-string": _runs(seed="x"),
    "run-id-integer": _runs(run_id=7),
    "run-id-of-another-file": _runs(run_id="../../../etc"),
    "status-integer": _runs(status=3),
    "status-unknown": _runs(status="done"),
    "task-unknown": _runs(task="ranking"),
    "selection-unknown": _runs(selection="\x1b[2Jlast"),
    "experiment-missing": _runs(experiment=None),
    "truncated-parquet": _truncated,
    "random-bytes": _bytes(os.urandom(600)),
    "empty-file": _bytes(b""),
    "a-pipe": lambda out, name="evil": os.mkfifo(out / "runs" / f"{name}.parquet"),
    "a-folder": lambda out, name="evil": (out / "runs" / f"{name}.parquet").mkdir(),
    "link-to-a-device": lambda out, name="evil": (out / "runs" / f"{name}.parquet").symlink_to("/dev/zero"),
}
OTHER_FILES = {  # name -> (plant(out), the file the warning names, the reader that reads it)
    "epochs-epoch-string": (_epochs([{"run_id": GOOD, "epoch": "x", "test_accuracy": 0.5}]), f"{GOOD}.parquet",
                            "curves"),
    "epochs-epoch-negative": (_epochs([{"run_id": GOOD, "epoch": -3, "test_accuracy": 0.5}]), f"{GOOD}.parquet",
                              "compare"),
    "epochs-accuracy-string": (_epochs([{"run_id": GOOD, "epoch": 1, "test_accuracy": "high"}]),
                               f"{GOOD}.parquet", "curves"),
    "epochs-recall-strings": (_epochs([{"run_id": GOOD, "epoch": 1, "test_per_class_recall": ["a"]}]),
                              f"{GOOD}.parquet", "compare"),
    "epochs-of-another-run": (_epochs([{"run_id": run_id("mixup", 0), "epoch": 1, "test_accuracy": 0.5}]),
                              f"{GOOD}.parquet", "export"),
    "calibration-nested": (_calibration('{"before": ' + "[" * DEEP + "]" * DEEP + "}"), "calibration.json",
                           "reliability"),
    "calibration-wrong-shape": (_calibration('{"bins": 5, "temperature": "\\u001b[31m", "before": 3}'),
                                "calibration.json", "reliability"),
    "calibration-bins-huge": (_calibration(json.dumps({"bins": 10**9, "temperature": 1.0})), "calibration.json",
                              "reliability"),
    "calibration-a-pipe": (_calibration_pipe, "calibration.json", "reliability"),
    "steps-log-garbage": (lambda out: (out / "jobs" / GOOD / "steps.parquet").write_bytes(b"PAR1garbagePAR1"),
                          "steps.parquet", "export"),
}


def _shown(reader, stdout, exported):
    if reader in ("compare", "curves", "reliability"):
        assert "erm" in stdout and "mixup" in stdout, stdout  # the good runs are still shown
    else:
        assert f"exported {exported} run(s)" in stdout, stdout


def _survived(code, stdout, stderr):
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 0, stdout + stderr
    assert not [line for line in stderr.splitlines() if not line.startswith("warning: ")], stderr
    sane(stdout + stderr)
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize("case", list(RUNS_FILES))
def test_a_crafted_runs_file_is_one_warning_and_the_rest_is_compared(out, tmp_path, case):
    RUNS_FILES[case](out)
    code, stdout, stderr = invoke(*reader_args("compare", out, tmp_path))
    warnings = _survived(code, stdout, stderr)
    assert len(warnings) == 1 and "evil.parquet" in warnings[0], warnings
    _shown("compare", stdout, 4)


@pytest.mark.parametrize("case", list(OTHER_FILES))
def test_a_crafted_epochs_or_side_file_is_one_warning_and_the_rest_is_shown(out, tmp_path, case):
    plant, named, reader = OTHER_FILES[case]
    plant(out)
    code, stdout, stderr = invoke(*reader_args(reader, out, tmp_path))
    warnings = _survived(code, stdout, stderr)
    assert len(warnings) == 1 and named in warnings[0], stderr
    _shown(reader, stdout, 4)


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_survives_all_the_crafted_files_at_once(out, tmp_path, reader):
    for i, plant in enumerate(RUNS_FILES.values()):
        plant(out, f"evil{i:02d}")
    OTHER_FILES["epochs-accuracy-string"][0](out)
    OTHER_FILES["calibration-wrong-shape"][0](out)
    (out / "claims" / f"{GOOD}.json").write_text('{"host": ' * 5000)  # a bad holder file: not read by these
    code, stdout, stderr = invoke(*reader_args(reader, out, tmp_path))
    warnings = _survived(code, stdout, stderr)
    for i in range(len(RUNS_FILES)):  # one line per bad file, each naming it
        assert len([w for w in warnings if f"evil{i:02d}.parquet" in w]) == 1, (i, stderr)
    extra = {"compare": 1, "curves": 1, "export": 1, "reliability": 1}[reader]
    assert len(warnings) == len(RUNS_FILES) + extra, stderr
    _shown(reader, stdout, 4)


@pytest.mark.parametrize("reader", READERS)
def test_nothing_usable_is_one_error_line_naming_the_first_skipped_file(out, tmp_path, reader):
    for p in (out / "runs").iterdir():
        p.write_bytes(b"garbage")
    code, stdout, stderr = invoke(*reader_args(reader, out, tmp_path))
    assert code == 2, stdout + stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no runs recorded yet" in lines[0], stderr
    assert "4 file(s) skipped" in lines[0] and ".parquet" in lines[0]
    assert len([line for line in stderr.splitlines() if line.startswith("warning: ")]) == 4
    assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize("reader", READERS)
def test_terminal_escape_sequences_read_from_disk_are_stripped(out, tmp_path, reader):
    cfg = json.loads(pq.read_table(out / "runs" / f"{GOOD}.parquet").column("config")[0].as_py())
    cfg["method"]["\x1b]0;owned\x07note"] = "\x1b[31mred\u202e"  # a config key and value that vary
    name = "erm\x1b[2J\x1b]8;;http://x\x07"
    _write(out / "runs" / f"{GOOD}.parquet", [{**_row(out, run_id=GOOD), "method": name,
                                                "experiment": "tiny\x9b31m", "config": json.dumps(cfg)}], "runs")
    code, stdout, stderr = invoke(*reader_args(reader, out, tmp_path))
    assert code == 0, stdout + stderr
    assert "\x1b" not in stdout + stderr and "\x9b" not in stdout + stderr and "\u202e" not in stdout + stderr
    sane(stdout + stderr)
    if reader in ("compare", "curves"):
        assert "erm[2J]8;;http://x" in stdout.replace("\n", "") or "erm[2J" in stdout


def test_inspect_of_a_crafted_record_is_one_line(out, tmp_path):
    d = out / "jobs" / run_id("mixup", 0)
    (d / "config.yaml").write_text(json.dumps({"method": {"name": "selmix"}}))
    (d / "selmix").mkdir()
    (d / "selmix" / "gains_00000010.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, stdout, stderr = invoke(*reader_args("inspect", out, tmp_path))
    assert code == 2 and "Traceback" not in stdout + stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and str(d) in stderr, stderr


def test_the_reader_keeps_every_good_row_and_each_warning_names_its_file(out):
    from mixcli.results.runs import read_results

    _runs(config="{not json")(out)
    (out / "runs" / "zzz.parquet").write_bytes(b"junk")
    said = []
    runs = read_results(out, "runs", said.append)
    assert sorted(runs["run_id"]) == sorted(p.stem for p in (out / "runs").iterdir() if p.stem not in ("evil", "zzz"))
    assert len(said) == 2 and "evil.parquet" in said[0] and "zzz.parquet" in said[1]


# ------------------------------------------------------------------------------------ export destinations
def _mount_tmpfs(d, opts: str) -> bool:
    """A small tmpfs at ``d`` (root only, where mounting is allowed): a real full or read-only disk."""
    import subprocess

    d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True).returncode == 0


def _umount(d) -> None:
    import subprocess

    if subprocess.run(["umount", str(d)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)  # still open somewhere: detach it


def _export_refused(out, tmp_path, to, uri, expect, limit_s=60.0):
    import time

    t0 = time.monotonic()
    code, stdout, stderr = invoke("export", out, "--to", to, "--uri", uri)
    took = time.monotonic() - t0
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr and "Exception in thread" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in " ".join(stderr.split()), stderr
    assert took < limit_s, took
    return lines[0]


@pytest.mark.parametrize("to", ["tensorboard", "mlflow"])
@pytest.mark.parametrize("kind", ["a-file", "under-a-file", "a-dangling-link"])
def test_export_to_a_bad_destination_is_one_line_naming_it(out, tmp_path, to, kind):
    if to == "mlflow":
        pytest.importorskip("mlflow")
    f = tmp_path / "f"
    f.write_text("x")
    folder = {"a-file": f, "under-a-file": f / "sub", "a-dangling-link": tmp_path / "link"}[kind]
    if kind == "a-dangling-link":
        folder.symlink_to(tmp_path / "nowhere")
    uri = str(folder) if to == "tensorboard" else f"sqlite:///{folder / 'm.db'}"
    expect = {"a-file": "is a file, expected a folder", "under-a-file": "cannot be created (Not a directory)",
              "a-dangling-link": "is a symbolic link to nothing"}[kind]
    if to == "mlflow" and kind == "a-file":
        uri, expect = f"sqlite:///{f}/m.db", f"the destination {f} is a file, expected a folder"
    line = _export_refused(out, tmp_path, to, uri, expect)
    assert str(folder if kind != "a-file" or to == "tensorboard" else f) in line


@pytest.mark.parametrize("to", ["tensorboard", "mlflow"])
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_export_to_a_full_or_read_only_disk_is_one_line(out, tmp_path, to, kind):
    if to == "mlflow":
        pytest.importorskip("mlflow")
    d = tmp_path / "disk"
    if kind == "read-only" and os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        mounted = False
    else:
        mounted = _mount_tmpfs(d, "size=64k" if kind == "full" else "ro,size=64k")
        if not mounted:
            pytest.skip("needs root to mount a small tmpfs (a real full or read-only disk)")
    try:
        if kind == "full":
            with open(d / "filler", "wb") as fh:
                with pytest.raises(OSError):
                    fh.write(b"\0" * 200_000)
                    fh.flush()
        uri = str(d / "tb") if to == "tensorboard" else f"sqlite:///{d / 'm.db'}"
        why = "the disk is full" if kind == "full" else ("it is read-only" if mounted else "read-only")
        _export_refused(out, tmp_path, to, uri, why)
    finally:
        if mounted:
            _umount(d)
        else:
            d.chmod(0o755)


def test_export_to_an_mlflow_server_that_never_answers_fails_within_seconds(out, tmp_path):
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as s:  # accepts connections (the kernel's backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        line = _export_refused(out, tmp_path, "mlflow", url, "cannot be reached (no answer within", limit_s=45)
    assert url in line
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    _export_refused(out, tmp_path, "mlflow", f"http://127.0.0.1:{port}", "cannot be reached", limit_s=45)


def test_a_logger_thread_failing_in_the_background_is_kept_not_printed(capsys):
    import threading

    from mixcli.results.export import _background

    with _background() as failed:
        t = threading.Thread(target=lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        t.start()
        t.join()
    assert len(failed) == 1 and failed[0].errno == 28
    assert "Traceback" not in capsys.readouterr().err


def test_compare_of_several_directories_leaves_out_one_without_usable_runs(out, tmp_path):
    bad = tmp_path / "bad"
    (bad / "runs").mkdir(parents=True)
    (bad / "runs" / "x.parquet").write_bytes(b"junk")
    code, stdout, stderr = invoke("compare", out, bad)
    warnings = _survived(code, stdout, stderr)
    assert any("x.parquet" in w for w in warnings) and any(f"left out {bad}: no usable runs" in w
                                                           for w in warnings), stderr
    _shown("compare", stdout, 4)
    code, stdout, stderr = invoke("compare", bad, tmp_path / "nowhere")
    assert code == 2 and "Traceback" not in stderr
