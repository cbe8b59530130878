"""Startup time of `mixcli --help` and `mixcli compare`, before and after, side by side.

"before" is the mixcli package of a git revision (default: the first parent of HEAD's branch point with
main, i.e. `main`), extracted with `git archive` into a temporary directory; "after" is this working tree.
Each command runs ``--repeat`` times in a fresh interpreter (``python -c 'from mixcli.entry import main;
main()' ARGS``, the console script with the tree first on ``sys.path``); the table shows the median wall time and whether torch
was imported. `compare` reads a small synthetic results directory written here (no training).

    python benchmarks/startup.py [--before main] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys; sys.argv = ['mixcli'] + sys.argv[1:]\n"
         "try:\n    from mixcli.entry import main  # the console script's entry point\n"
         "except ImportError:\n    from mixcli.cli import main  # (revisions before mixcli.entry)\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "import mixcli\n"
         "sys.stderr.write('\\nTORCH=%d FROM=%s\\n' % ('torch' in sys.modules, mixcli.__file__))\n")


def extract(rev: str, dest: Path) -> Path:
    """The ``mixcli`` package of ``rev`` under ``dest``."""
    blob = subprocess.run(["git", "archive", rev, "mixcli"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def synthetic_results(out: Path) -> Path:
    """A results directory of 3 methods x 3 seeds, one epoch each, written through the store."""
    sys.path.insert(0, str(ROOT))
    from mixcli.results.store import Store

    store = Store(out)
    for i, m in enumerate(("erm", "mixup", "cutmix")):
        for s in range(3):
            rid = f"{m}-s{s}-bench"
            cfg = {"name": "bench", "task": "classification", "dataset": {"name": "digits"},
                   "model": {"name": "mlp"}, "method": {"name": m}, "seed": s, "eval": {"selection": "final"}}
            store.write_run({"run_id": rid, "experiment": "bench", "method": m, "dataset": "digits", "model": "mlp",
                             "loss": "soft_ce", "task": "classification", "seed": s, "status": "finished",
                             "config": json.dumps(cfg), "selection": "final", "epochs": 1})
            store.write_epochs(rid, [{"epoch": 1, "test_accuracy": 0.5 + 0.1 * i + 0.01 * s, "test_nll": 1.0,
                                      "test_ece": 0.1, "test_worst_class_recall": 0.3, "test_mean_recall": 0.5}])
    return out


def timed(tree: Path, args: list[str], repeat: int) -> tuple[float, bool]:
    times, torch_loaded = [], False
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "80"}
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True,
                           cwd=tree.parent)  # (not the repository root: its mixcli/ would shadow the tree's)
        times.append(time.perf_counter() - t0)
        torch_loaded = "TORCH=1" in r.stderr
        if r.returncode != 0 or f"FROM={tree / 'mixcli'}" not in r.stderr:
            raise SystemExit(f"{args} failed or imported another mixcli than {tree}:\n{r.stderr[-2000:]}")
    return statistics.median(times), torch_loaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main", help="git revision to compare against (default: main)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (the median is shown)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = extract(a.before, Path(tmp) / "before" / "tree")
        results = synthetic_results(Path(tmp) / "results")
        commands = {"mixcli --help": ["--help"], "mixcli compare": ["compare", str(results)]}
        print(f"{'command':<16} {'before (' + a.before + ')':>22} {'after (this tree)':>22}")
        for label, args in commands.items():
            cells = []
            for tree in (before, ROOT):
                t, torch_loaded = timed(tree, args, a.repeat)
                cells.append(f"{t:6.2f} s{' (torch)' if torch_loaded else ' (no torch)'}")
            print(f"{label:<16} {cells[0]:>22} {cells[1]:>22}")
        print(f"median of {a.repeat} runs each, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
