"""Sweep throughput: the same sweep with 1 vs 2 local workers, and the local pool vs Ray, side by side.

CPU (default): a 16-job digits sweep (4 methods x 4 seeds, cnn, ``--epochs`` epochs), timed end to end as a
user runs it (``mixcli run`` in a fresh process, output in a fresh directory each time): one worker with
all cores' threads (the CPU default before issue 22), one worker with 1 thread, ``--workers`` workers with 1
thread each (the default), and the Ray executor with the same number of slots. Goals: >= 1.6x for 2 workers on 2 cores; Ray's overhead <= 15% over the local pool.

CUDA (``--device cuda``): the CIFAR ResNet-18 recipe on synthetic CIFAR-shaped data (nothing downloaded),
with 1, 2 and 4 jobs packed onto one GPU (``--jobs-per-gpu``), in total training images/s (goal: packing
>= 1.5x one job's throughput).

    python benchmarks/sweep.py                       # CPU: 1 vs 2 workers, local vs Ray
    python benchmarks/sweep.py --device cuda         # GPU packing
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

CPU_EXP = """\
name: sweep_bench
dataset: {{name: digits}}
model: {{name: cnn, width: 16}}
method: erm
train: {{epochs: {epochs}, batch_size: 64, optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}}}
seeds: 4
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


def sweep(exp: Path, work: Path, tag: str, *args: str) -> tuple[float, pd.DataFrame]:
    out = work / tag
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mixcli.cli", "run", str(exp), "--out", str(out), *args],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{tag}: mixcli run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall, pd.read_parquet(out / "runs")


def cpu(args, work: Path) -> None:
    exp = work / "cpu.yaml"
    exp.write_text(CPU_EXP.format(epochs=args.epochs))
    n = args.workers
    cores = os.cpu_count()
    rows = [(f"1 worker, {cores} thr", *sweep(exp, work, "w1", "--device", "cpu", "--jobs", "1", "--threads",
                                          str(cores))),
            ("1 worker, 1 thr", *sweep(exp, work, "w1t1", "--device", "cpu", "--jobs", "1")),
            (f"{n} workers x 1 thr", *sweep(exp, work, f"w{n}", "--device", "cpu", "--jobs", str(n)))]
    try:
        import ray  # noqa: F401
        rows.append((f"ray, {n} slots", *sweep(exp, work, "ray", "--device", "cpu", "--executor", "ray",
                                               "--jobs", str(n))))
    except ImportError:
        print('(Ray not installed: pip install "mixcli[ray]" to compare it)')
    import shutil

    if shutil.which("sbatch"):  # a SLURM cluster (e.g. scripts/slurm_up.sh's single node): one array
        rows.append((f"slurm, {n} tasks", *sweep(exp, work, "slurm", "--device", "cpu", "--executor", "slurm",
                                                 "--slurm-parallelism", str(n),
                                                 "--threads", str(max(1, cores // n)))))
    else:
        print("(no SLURM here: bash scripts/slurm_up.sh starts a single-node one to compare it)")
    base = rows[0][1]
    print(f"\n16-job digits sweep ({args.epochs} epochs/job, cnn), {os.cpu_count()} cores, wall time incl. start-up")
    print(f"{'executor':<16}{'wall s':>9}{'speed-up':>10}{'sum of job s':>14}")
    for name, wall, runs in rows:
        print(f"{name:<16}{wall:>9.1f}{base / wall:>9.2f}x{runs['wall_time_s'].sum():>14.1f}")
    if len(rows) == 4:
        print(f"Ray overhead over the local pool: {100 * (rows[3][1] / rows[2][1] - 1):+.1f}% (goal <= 15%)")
    print(f"{n} workers x 1 thread vs 1 worker x {cores} threads: {base / rows[2][1]:.2f}x (goal >= 1.6x on 2 cores); "
          f"vs 1 worker x 1 thread: {rows[1][1] / rows[2][1]:.2f}x")


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
    args = ap.parse_args()
    args.epochs = args.epochs or (20 if args.device == "cpu" else 3)
    with tempfile.TemporaryDirectory() as d:
        (cpu if args.device == "cpu" else gpu)(args, Path(d))


if __name__ == "__main__":
    main()
