"""A multi-seed sweep trained batched (``train.batch_seeds: true``) and unbatched, side by side in one run:
wall time of each, the speed-up, and how far the batched members are from their unbatched twins (paired by
run id, read from the two runs tables).

Protocols (shortened with ``--epochs``; the seeds with ``--seeds``):
- ``airfoil``: the C-Mixup Airfoil protocol (``experiments/cmixup_airfoil.yaml``: mlp 5-128-128-1, Adam,
  batch 16), method cmixup (``--methods`` for others of its grid), the data from ``--airfoil`` (default
  ``../shared/data/airfoil_self_noise.dat`` beside the repository);
- ``quickstart``: ``experiments/quickstart.yaml`` (cnn width 16 on digits), method mixup;
- ``resnet18`` (CUDA only): resnet18 on CIFAR-shaped synthetic images (3x32x32, 100 classes), mixup.

Both sweeps run in this process, after an untimed warm-up of each (2 seeds, 2 epochs: imports and
first-call costs), with ``--threads`` torch threads (1: mixcli's default per CPU job), one
run after the other (unbatched) or as one batched model.

    python benchmarks/batched_seeds.py --device cpu --protocols airfoil,quickstart --seeds 10 --epochs 3
    python benchmarks/batched_seeds.py --device cuda --protocols airfoil,quickstart,resnet18 --seeds 10
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mixcli.execution.experiment import run_experiment
from mixcli.training.engine import pick_device

ROOT = Path(__file__).resolve().parents[1]


def protocol(name: str, args) -> tuple[dict, str]:
    """The experiment document of ``name`` and the metric compared."""
    if name == "airfoil":
        doc = yaml.safe_load((ROOT / "experiments" / "cmixup_airfoil.yaml").read_text())
        doc["dataset"].update(path=str(Path(args.airfoil).resolve()), download=False)
        grid = {m if isinstance(m, str) else m["name"]: m for m in doc["grid"]["method"]}
        methods = [grid[m] for m in (args.methods or "cmixup").split(",")]
        metric = "best_test_rmse"
    elif name == "quickstart":
        doc = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
        methods, metric = [{"name": "mixup", "alpha": 0.4}], "final_test_accuracy"
    elif name == "resnet18":
        doc = {"name": "resnet18_synthetic", "task": "classification",
               "dataset": {"name": "synthetic_images", "n_train": 5000, "n_test": 1000},
               "model": {"name": "resnet18"},
               "train": {"epochs": 1, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.1}},
               "eval": {"every": 1}}
        methods, metric = [{"name": "mixup", "alpha": 1.0}], "final_test_accuracy"
    else:
        raise SystemExit(f"--protocols: unknown protocol {name!r} (airfoil, quickstart, resnet18)")
    doc.pop("grid", None)
    doc["method"] = methods[0] if len(methods) == 1 else doc.get("method", "erm")
    if len(methods) > 1:
        doc["grid"] = {"method": methods}
    doc["seeds"] = args.seeds
    if args.epochs:
        doc["train"]["epochs"] = args.epochs
    return doc, metric


def sweep(doc: dict, batched: bool, out: Path, args) -> tuple[float, pd.DataFrame]:
    doc = {**doc, "train": {**doc["train"], "batch_seeds": batched}, "out": str(out)}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_experiment(path, device=args.device, threads=args.threads, in_process=True, warn=lambda s: None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if res.failed:
        raise SystemExit(f"{out.name}: {len(res.failed)} run(s) failed: {res.failed[0].error}")
    epochs_s = float(pd.read_parquet(out / "epochs")["time_s"].sum())
    return seconds, cpu, epochs_s, pd.read_parquet(out / "runs").sort_values("run_id").reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--protocols", default="airfoil,quickstart")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=0, help="epochs of each run (0: the protocol's own)")
    ap.add_argument("--methods", default="", help="airfoil: methods of its grid, comma-separated [cmixup]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--airfoil", default=str(ROOT.parent / "shared" / "data" / "airfoil_self_noise.dat"))
    args = ap.parse_args()
    device = pick_device(args.device)
    args.device = device.type
    print(f"{args.seeds} seeds per configuration, {device} "
          f"({'CUDA' if device.type == 'cuda' else f'{args.threads} torch thread(s)'}); wall time of the whole "
          "sweep (data loading, evaluation and result files included)")
    print("epochs s: the epochs' own wall time (training steps and evaluation, the time_s column summed), "
          "without the per-run set-up and result files;\ncpu s: this process's CPU time for the whole sweep "
          "(steadier than wall time on a shared machine)")
    head = (f"{'protocol':<12}{'runs':>5}{'epochs':>7}{'unbatched s':>13}{'batched s':>11}{'speed-up':>10}"
            f"{'epochs s unb/bat':>18}{'speed-up':>10}{'cpu s unb/bat':>16}{'speed-up':>10}  {'metric':<20}"
            f"{'max |diff|':>11}{'mean diff':>11}")
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.protocols.split(","):
            if name == "resnet18" and device.type != "cuda":
                print(f"{name:<12} (CUDA only; skipped)")
                continue
            doc, metric = protocol(name, args)
            # warm-up, untimed: imports, plugin loading and first-call costs are then paid by neither sweep
            warm = {**doc, "seeds": 2, "train": {**doc["train"], "epochs": 2}}
            for batched in (False, True):
                sweep(warm, batched, Path(tmp) / f"{name}_warmup_{batched}", args)
            t_u, c_u, e_u, u = sweep(doc, False, Path(tmp) / f"{name}_unbatched", args)
            t_b, c_b, e_b, b = sweep(doc, True, Path(tmp) / f"{name}_batched", args)
            assert list(u.run_id) == list(b.run_id) and b.batched.all() and not u.batched.any()
            d = b[metric].to_numpy() - u[metric].to_numpy()
            print(f"{name:<12}{len(b):>5}{doc['train']['epochs']:>7}{t_u:>13.1f}{t_b:>11.1f}{t_u / t_b:>9.2f}x"
                  f"{f'{e_u:.1f}/{e_b:.1f}':>18}{e_u / e_b:>9.2f}x{f'{c_u:.1f}/{c_b:.1f}':>16}{c_u / c_b:>9.2f}x"
                  f"  {metric:<20}{np.abs(d).max():>11.2e}"
                  f"{d.mean():>11.2e}", flush=True)


if __name__ == "__main__":
    main()
