"""Sweep throughput: the old CPU default against the new one, 1 vs 2 local workers, and the local pool vs Ray,
side by side, quiet and (``--busy N``) with N CPU-burning background processes, from one command.

CPU (default): a digits sweep (4 methods x ``--seeds`` seeds, 16 jobs by default, cnn, ``--epochs`` epochs),
timed end to end as a user runs it (``mixcli run`` in a fresh process, output in a fresh directory each
time). Rows: the CPU default before issue 22 (every job in the ``mixcli`` process, as many torch threads as
cores: ``--in-process --threads <cores>``), one worker with 1 thread, ``--workers`` workers with 1 thread
each (today's default), and the Ray executor with the same number of slots (``--no-ray`` skips it). With
``--busy N`` every row is measured twice, quiet and then while N processes spin on the CPU (started before
and killed after that row's sweep); the table shows both side by side, with the speed-up over the old
default, the CPU time of mixcli and its workers, and whether the busy run gave the same epochs tables as the
quiet one. Goals: >= 1.6x for 2 workers on 2 cores; Ray's overhead <= 15% over the local pool.

CUDA (``--device cuda``): the CIFAR ResNet-18 recipe on synthetic CIFAR-shaped data (nothing downloaded),
with 1, 2 and 4 jobs packed onto one GPU (``--jobs-per-gpu``), in total training images/s (goal: packing
>= 1.5x one job's throughput).

    python benchmarks/sweep.py                       # CPU, quiet
    python benchmarks/sweep.py --busy 1              # CPU, quiet and with one busy process
    python benchmarks/sweep.py --epochs 1 --seeds 1 --no-ray --busy 1   # a quick check (4 jobs)
    python benchmarks/sweep.py --device cuda         # GPU packing
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

CPU_EXP = """\
name: sweep_bench
dataset: {{name: digits}}
model: {{name: cnn, width: 16}}
method: erm
train: {{epochs: {epochs}, batch_size: 64, optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}}}
seeds: {seeds}
grid:
  method: [erm, {{name: mixup, alpha: 0.4}}, {{name: cutmix, alpha: 1.0}}, {{name: manifold_mixup, alpha: 2.0}}]
"""

GPU_EXP = """\
name: pack_bench
dataset: {{name: synthetic_images, n_train: {n_train}, n_test: 2000}}
model: resnet18
method: erm
train: {{epochs: {epochs}, batch_size: 100, optimizer: {{name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}},
        schedule: cosine}}
eval: {{every: {epochs}}}
seeds: {seeds}
"""


class SweepFailed(SystemExit):
    pass


def sweep(exp: Path, work: Path, tag: str, *args: str) -> tuple[float, pd.DataFrame]:
    return _sweep(exp, work / tag, *args)[:2]


def _sweep(exp: Path, out: Path, *args: str) -> tuple[float, pd.DataFrame, float, pd.DataFrame]:
    """(wall s, runs, CPU s of mixcli and its workers, epochs without time_s) of one ``mixcli run``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mixcli.cli", "run", str(exp), "--out", str(out), *args],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SweepFailed(f"{out.name}: mixcli run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    epochs = pd.read_parquet(out / "epochs").drop(columns="time_s").sort_values(["run_id", "epoch"])
    return wall, pd.read_parquet(out / "runs"), cpu, epochs.reset_index(drop=True)


def cpu(args, work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from defaults import busy, cores as affinity  # (benchmarks/defaults.py: the spinning processes)

    exp = work / "cpu.yaml"
    exp.write_text(CPU_EXP.format(epochs=args.epochs, seeds=args.seeds))
    n, cores = args.workers, affinity()
    setups = [(f"old default: in-process, {cores} thr", ["--in-process", "--threads", str(cores)]),
              ("1 worker, 1 thr", ["--jobs", "1"]),
              (f"{n} workers x 1 thr (default)" if n == cores else f"{n} workers x 1 thr", ["--jobs", str(n)])]
    try:
        if args.no_ray:
            raise ImportError
        import ray  # noqa: F401
        setups.append((f"ray, {n} slots", ["--executor", "ray", "--jobs", str(n)]))
    except ImportError:
        print("(Ray skipped)" if args.no_ray else '(Ray not installed: pip install "mixcli[ray]" to compare it)')
    import shutil

    if shutil.which("sbatch") and not args.no_slurm:  # a SLURM cluster (e.g. scripts/slurm_up.sh's single node)
        setups.append((f"slurm, {n} tasks", ["--executor", "slurm", "--slurm-parallelism", str(n),
                                              "--threads", str(max(1, cores // n))]))
    elif args.no_slurm:
        print("(SLURM skipped)")
    else:
        print("(no SLURM here: bash scripts/slurm_up.sh starts a single-node one to compare it)")
    loads = [("quiet", 0)] + ([(f"busy x{args.busy}", args.busy)] if args.busy else [])
    jobs = 4 * args.seeds
    print(f"{jobs}-job digits sweep ({args.epochs} epochs/job, cnn), {cores} cores; load average at the start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    res = {}
    for i, (name, extra) in enumerate(list(setups)):
        for load, k in loads:
            try:
                with busy(k):
                    res[name, load] = r = _sweep(exp, work / f"s{i}-{k}", "--device", "cpu", *extra)
            except SweepFailed as exc:
                if i < 3:
                    raise
                print(f"  {name}: failed, left out of the table ({str(exc).strip().splitlines()[-1]})")
                setups.remove((name, extra))
                break
            print(f"  {name:<36}{load:<9}{r[0]:8.1f} s wall {r[2]:8.1f} s CPU  (load average now "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{jobs}-job digits sweep ({args.epochs} epochs/job, cnn), {cores} cores, wall time incl. start-up; "
          "speed-up over the old default under the same load")
    head = f"{'executor':<36}" + "".join(f"{load + ' s':>14}{'speed-up':>10}{'CPU s':>8}" for load, _ in loads)
    print(head + ("  same numbers quiet/busy" if len(loads) == 2 else ""))
    base = {load: res[setups[0][0], load][0] for load, _ in loads}
    for name, _ in setups:
        line = f"{name:<36}"
        for load, _ in loads:
            wall, _, cpu_s, _ = res[name, load]
            line += f"{wall:>14.1f}{base[load] / wall:>9.2f}x{cpu_s:>8.1f}"
        if len(loads) == 2:
            same = res[name, loads[0][0]][3].equals(res[name, loads[1][0]][3])
            line += f"  {'yes' if same else 'NO'}"
        print(line)
    q = {name: res[name, "quiet"][0] for name, _ in setups}
    names = [name for name, _ in setups]
    if len(names) > 3 and names[3].startswith("ray"):
        print(f"Ray overhead over the local pool (quiet): {100 * (q[names[3]] / q[names[2]] - 1):+.1f}% (goal <= 15%)")
    print(f"{n} workers x 1 thread vs the old default (quiet): {q[names[0]] / q[names[2]]:.2f}x (goal >= 1.6x on "
          f"2 cores); vs 1 worker x 1 thread: {q[names[1]] / q[names[2]]:.2f}x")
    old, new = res[names[0], "quiet"][1], res[names[2], "quiet"][1]
    same = res[names[0], "quiet"][3].equals(res[names[2], "quiet"][3])
    print(f"mean final test accuracy: old default {100 * old['final_test_accuracy'].mean():.2f}%, "
          f"{names[2]} {100 * new['final_test_accuracy'].mean():.2f}%; epochs tables "
          f"{'identical' if same else 'differ (the thread count is part of what a run computes)'}")


def gpu(args, work: Path) -> None:
    print(f"\nCIFAR ResNet-18 recipe on synthetic 32x32 data, {args.n_train} images x {args.epochs} epochs per job")
    print(f"{'jobs/GPU':>9}{'jobs':>6}{'wall s':>9}{'images/s':>11}{'vs 1 job':>10}")
    base = None
    for k in (1, 2, 4):
        exp = work / f"gpu{k}.yaml"
        exp.write_text(GPU_EXP.format(n_train=args.n_train, epochs=args.epochs, seeds=k))
        _, runs = sweep(exp, work, f"gpu{k}", "--device", "cuda", "--gpus", "0", "--jobs-per-gpu", str(k))
        # all k jobs run at once: the sweep's training time is the slowest job's
        wall = float(runs["wall_time_s"].max())
        rate = k * args.n_train * args.epochs / wall
        base = base or rate
        print(f"{k:>9}{k:>6}{wall:>9.1f}{rate:>11.0f}{rate / base:>9.2f}x")
    print("goal: packing >= 1.5x one job's images/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel CPU sweep")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per job (default: 20 on CPU, 3 on CUDA)")
    ap.add_argument("--n-train", type=int, default=20_000, help="synthetic training images per job (CUDA)")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per method of the CPU sweep (4 methods; default 4)")
    ap.add_argument("--busy", type=int, default=0,
                    help="also measure every CPU row with N CPU-burning background processes (default 0: quiet only)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    ap.add_argument("--no-slurm", action="store_true", help="skip the SLURM row")
    args = ap.parse_args()
    args.epochs = args.epochs or (20 if args.device == "cpu" else 3)
    with tempfile.TemporaryDirectory() as d:
        (cpu if args.device == "cpu" else gpu)(args, Path(d))


if __name__ == "__main__":
    main()
