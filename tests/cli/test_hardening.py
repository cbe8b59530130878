"""Hardening round 3 (issue 23), the parts about what the CLI prints and writes: retry hints that a shell
takes as printed, `show --job ''`, `--png` naming a folder, terminal escapes read from result files."""
from __future__ import annotations

import json
import shlex

from conftest import TINY

from mixcli.results.store import Store, clean_text


def _finished(out, method="erm", error_text=None):
    store = Store(out)
    for seed in (0, 1):
        cfg = {"name": "tiny", "task": "classification", "dataset": {"name": "digits"}, "model": {"name": "mlp"},
               "method": {"name": method}, "loss": {"name": "soft_ce"}, "train": {"epochs": 2},
               "eval": {"selection": "final"}, "seed": seed}
        rid = f"{method}-s{seed}"
        store.write_run({"run_id": rid, "experiment": "tiny", "method": method, "dataset": "digits", "model": "mlp",
                         "loss": "soft_ce", "task": "classification", "seed": seed, "status": "finished",
                         "config": json.dumps(cfg), "selection": "final", "epochs": 2})
        store.write_epochs(rid, [{"epoch": e, "test_accuracy": 0.5 + 0.1 * e + 0.01 * seed} for e in (1, 2)])
    return out


def test_the_retry_hint_is_shell_quoted(cli, write, tmp_path):
    p = write(TINY.replace("epochs: 3", "epochs: 1"), "my exp.yaml")
    out = tmp_path / "out dir"
    code, text = cli("run", p, "--out", out, "--device", "cpu", "--set", "train.optimizer.lr=1.0e+6")
    assert code == 1, text
    line = next(ln for ln in text.splitlines() if ln.startswith("retry only these: "))
    argv = shlex.split(line.removeprefix("retry only these: "))
    assert argv == ["mixcli", "run", str(p), "--set", "train.optimizer.lr=1.0e+6", "--out", str(out),
                    "--retry-failed"]


def test_show_with_an_empty_job_is_refused(cli, write):
    code, text = cli("show", write(TINY), "--job", "")
    assert code == 2 and "--job ''" in text and "Traceback" not in text


def test_curves_png_into_a_folder_writes_inside_it(cli, tmp_path):
    out = _finished(tmp_path / "res")
    figs = tmp_path / "figs"
    figs.mkdir()
    code, text = cli("curves", out, "--png", figs)
    assert code == 0, text
    assert (figs / "curves_test_accuracy.png").is_file() and not (tmp_path / "figs.png").exists()
    code, text = cli("curves", out, "--png", tmp_path / "plain")
    assert code == 0 and (tmp_path / "plain.png").is_file() and "plain.png" in text


def test_terminal_escapes_in_result_files_never_reach_the_screen(cli, tmp_path):
    out = _finished(tmp_path / "res", method="erm\x1b]0;pwned\x07\x1b[2J")
    for args in (("compare", out), ("curves", out), ("status", out)):
        code, text = cli(*args)
        assert code == 0, text
        assert "\x1b" not in text and "\x07" not in text, args
    assert clean_text("a\x1b[31mb\tc\nd\x9b") == "a[31mb\tc\nd"


def test_out_of_memory_at_import_is_one_line_with_its_exit_code(tmp_path):
    import subprocess
    import sys

    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'torch' or name.startswith('torch.'):\n"
            "        raise OSError(12, 'Cannot allocate memory')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "sys.argv = ['mixcli', 'run', sys.argv[1], '--dry-run']\n"
            "from mixcli.cli import main\n"
            "main()\n")
    exp = tmp_path / "e.yaml"
    exp.write_text(TINY)
    r = subprocess.run([sys.executable, "-c", code, str(exp)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert "out of memory" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_jobs_beyond_the_sweep_are_capped_with_a_note(cli, write, tmp_path):
    code, text = cli("run", write(TINY.replace("epochs: 3", "epochs: 1")), "--out", tmp_path / "o", "--device",
                     "cpu", "--jobs", "100000")
    assert code == 0, text
    assert "--jobs 100000 capped at the 1 job(s)" in text and "one at a time" in text


def test_a_deleted_epochs_file_is_rebuilt_and_a_stray_file_moved_aside(cli, write, tmp_path):
    import pandas as pd

    p = write(TINY.replace("epochs: 3", "epochs: 2"))
    out = tmp_path / "o"
    assert cli("run", p, "--out", out, "--device", "cpu")[0] == 0
    before = pd.read_parquet(out / "epochs")
    (rid,) = before["run_id"].unique()
    (out / "epochs" / f"{rid}.parquet").unlink()
    (out / "runs" / "notes.txt").write_text("a user's note")
    code, text = cli("run", p, "--out", out, "--device", "cpu")
    assert code == 0, text
    assert "notes.txt" in text and (out / "stray" / "runs" / "notes.txt").read_text() == "a user's note"
    after = pd.read_parquet(out / "epochs")
    pd.testing.assert_frame_equal(before.drop(columns="time_s"), after.drop(columns="time_s"))
    runs = pd.read_parquet(out / "runs")  # the whole folder reads again
    assert runs["attempts"].tolist() == [1]  # rebuilt from the checkpoint, not trained again
