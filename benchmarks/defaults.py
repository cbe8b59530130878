"""The CPU defaults before and after issue 22, quiet and with busy background processes, side by side.

Before: every job in the ``mixcli`` process, one at a time, with as many torch threads as cores
(``--in-process --threads <cores>``: what ``mixcli run`` did by default on CPU). After: the defaults, one
worker process per core with 1 torch thread each. Each sweep runs end to end as a user runs it (a fresh
``mixcli run`` process, a fresh output directory), quiet and then with ``--busy`` processes spinning on the
CPU (started and stopped by this script). Printed: wall time, the CPU time of mixcli and its workers, the
mean test accuracy and whether both defaults gave the same numbers.

    python benchmarks/defaults.py                                      # the quickstart
    python benchmarks/defaults.py experiments/methods_digits.yaml --set train.epochs=5
    python benchmarks/defaults.py --busy 2 --only after
    python benchmarks/defaults.py --set train.epochs=1 --busy 1       # a quick check of the table

``--busy 0`` (or ``--quiet-only``) measures quiet only. Each line also shows the load average when that
sweep ended (the machine may be shared).
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy(n: int):
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def sweep(exp: str, out: Path, extra: list[str], sets: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "mixcli.cli", "run", exp, "--out", str(out), "--device", "cpu", *extra]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        sys.exit(f"mixcli run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    runs = pd.read_parquet(out / "runs")
    epochs = pd.read_parquet(out / "epochs").drop(columns="time_s").sort_values(["run_id", "epoch"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    fin = runs[runs["status"] == "finished"]
    return {"wall": wall, "cpu": cpu, "acc": fin["final_test_accuracy"].mean() if len(fin) else float("nan"),
            "done": f"{len(fin)}/{len(runs)}", "epochs": epochs.reset_index(drop=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="experiments/quickstart.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="passed to mixcli run (repeatable)")
    ap.add_argument("--busy", type=int, default=1,
                    help="busy background processes in the busy rows (default 1; 0: quiet only)")
    ap.add_argument("--only", choices=("before", "after"), help="run one of the two defaults only")
    ap.add_argument("--quiet-only", action="store_true", help="skip the busy rows")
    args = ap.parse_args()
    n = cores()
    setups = [("before", f"in-process, {n} threads", ["--in-process", "--threads", str(n)]),
              ("after", f"{n} workers x 1 thread", [])]
    setups = [s for s in setups if args.only in (None, s[0])]
    loads = [("quiet", 0)] + ([] if args.quiet_only or args.busy <= 0 else [(f"busy x{args.busy}", args.busy)])
    print(f"{args.experiment} {' '.join('--set ' + s for s in args.sets)}: {n} cores, load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for load, k in loads:
            with busy(k):
                for tag, label, extra in setups:
                    res[tag, load] = r = sweep(args.experiment, Path(d) / f"{tag}-{k}", extra, args.sets)
                    print(f"  {tag:<7}{label:<26}{load:<9}{r['wall']:8.1f} s wall {r['cpu']:8.1f} s CPU "
                          f"acc {100 * r['acc']:.2f}%  ({r['done']} finished; load average "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{'load':<10}{'before s':>10}{'after s':>10}{'speed-up':>10}{'CPU before':>12}{'CPU after':>11}"
          f"{'acc before':>12}{'acc after':>11}")
    for load, _ in loads:
        b, a = res.get(("before", load)), res.get(("after", load))
        if b and a:
            print(f"{load:<10}{b['wall']:>10.1f}{a['wall']:>10.1f}{b['wall'] / a['wall']:>9.2f}x{b['cpu']:>12.1f}"
                  f"{a['cpu']:>11.1f}{100 * b['acc']:>11.2f}%{100 * a['acc']:>10.2f}%")
    for tag in ("before", "after"):
        if (tag, "quiet") in res and len(loads) == 2 and (tag, loads[1][0]) in res:
            same = res[tag, "quiet"]["epochs"].equals(res[tag, loads[1][0]]["epochs"])
            print(f"{tag}: quiet and busy runs give {'identical' if same else 'DIFFERENT'} epochs tables")
    if ("after", "quiet") in res and n > 1:
        print("(after: the numbers are those of --threads 1 on any machine; before: of --threads <cores>)")


if __name__ == "__main__":
    main()
