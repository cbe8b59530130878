"""mixcli's training of one job against a bare PyTorch loop of the same model on the same data, side by side,
for this tree and (``--before``) an older revision, in one invocation.

The job is the quickstart's erm job (digits, ``cnn`` width 16, ``--epochs`` epochs of batch 64, SGD with
nesterov momentum and weight decay, cosine schedule with a 1-epoch warm-up, val and test evaluated every
epoch). mixcli trains it through the engine (:func:`mixcli.training.engine.run_job`: the device-resident
batches, the method and loss plugins, the epoch checkpoints, the epochs and runs parquet files, the config),
into a fresh output directory each round. The bare loop is what one writes by hand: the same uint8 tensors
normalized per batch, ``F.cross_entropy``, the same optimizer and schedule, and the same evaluation of val
and test after every epoch (batches of 1024, mixcli's ``eval.batch_size``; with ``--bare-eval metrics``, the
default, it also computes the metrics mixcli records, with the same function,
:func:`mixcli.metrics.classification_metrics`; ``--bare-eval accuracy`` computes the accuracy only). What the
bare loop does not do is printed with the table: it writes no file, and uses the hard-label cross-entropy
(mixcli's erm goes through the ``soft_ce`` loss plugin).

Each variant runs in its own long-lived process (the bare loop and this tree's mixcli share one; the
``--before`` revision's mixcli and plugins, extracted with ``git archive``, run in another), warmed up by one
round first (imports, plugin loading, first-use allocations), with the same torch threads (``--threads``).
The rounds alternate between the variants (the order rotates) so that the machine's load hits all alike; the
median round is printed with the ratios to the bare loop (goal <= 1.05x on CPU), of wall time and of CPU time
(the process's, writer thread included: steadier on a shared machine), the CPU time split into the epochs'
training steps, the evaluations and the rest (loading, building, and for mixcli its files and bookkeeping:
its fixed cost), and the load average at the start and the end. All are timed end to end: loading the digits split (the same plugin), building the model,
training, evaluating and, for mixcli, every file it writes (``run_job``).

    python benchmarks/overhead.py [--epochs 15] [--rounds 5] [--threads 1] [--before main|none]
"""
from __future__ import annotations

import argparse
import json
import math
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

CONFIG = """\
name: overhead
dataset: {{name: digits}}
model: {{name: cnn, width: 16}}
method: erm
train:
  epochs: {epochs}
  batch_size: 64
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, nesterov: true}}
  schedule: {{name: cosine, warmup_epochs: 1}}
eval: {{every: 1, batch_size: 1024}}
seeds: [0]
"""
EVAL_BATCH = 1024


# ------------------------------------------------------------------------------------------ in the workers
def mixcli_round(exp_path: Path, work: Path, k: int) -> tuple[float, float, float]:
    import torch
    from mixcli.training import engine
    from mixcli.config.jobs import expand
    from mixcli.config.spec import load_experiment
    from mixcli.results.store import Store

    exp = load_experiment(exp_path, [])
    exp.out = work / f"mixcli-{k}"
    (job,) = expand(exp)
    store = Store(exp.out)
    spent = {"train": 0.0, "eval": 0.0}
    real = {"train": engine.train_epoch, "eval": engine.evaluate_all}

    def timed(part):
        def call(*a, **kw):
            c = time.thread_time()
            try:
                return real[part](*a, **kw)
            finally:
                spent[part] += time.thread_time() - c
        return call

    engine.train_epoch, engine.evaluate_all = timed("train"), timed("eval")  # (run_job calls them by name)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        row = engine.run_job(job, store, torch.device("cpu"))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        engine.train_epoch, engine.evaluate_all = real["train"], real["eval"]
    assert row["status"] == "finished"
    return wall, cpu, float(row["final_test_accuracy"]), spent["train"], spent["eval"]


def bare_round(epochs: int, metrics: bool, seed: int = 0) -> tuple[float, float, float]:
    import torch
    import torch.nn.functional as F
    from mixcli.metrics import classification_metrics
    from mixcli.registry import REGISTRY

    t0, c0 = time.perf_counter(), time.process_time()
    spent = {"train": 0.0, "eval": 0.0}
    torch.manual_seed(seed)
    data = REGISTRY.get("datasets", "digits")().load()  # (the same split, as uint8 tensors)
    torch.manual_seed(seed)
    model = REGISTRY.get("models", "cnn")(data.input_shape, data.out_dim, width=16)
    x, y = data.train.x, data.train.y
    tests = [(s.x, s.y) for s in (data.val, data.test) if s is not None and len(s)]
    counts = torch.bincount(y, minlength=data.num_classes).numpy()
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = len(x) // 64
    total, warm = epochs * steps, steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        c = time.thread_time()
        model.train()
        perm = torch.randperm(len(x), generator=g)
        loss_sum = torch.zeros(())
        for i in range(steps):
            idx = perm[i * 64:(i + 1) * 64]
            loss = F.cross_entropy(model(torch.addcmul(shift, x[idx], scale)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        float(loss_sum)
        spent["train"] += time.thread_time() - c
        c = time.thread_time()
        model.eval()
        with torch.no_grad():
            for tx, ty in tests:
                out = torch.cat([model(torch.addcmul(shift, tx[j:j + EVAL_BATCH], scale))
                                 for j in range(0, len(tx), EVAL_BATCH)])
                if metrics:
                    acc = classification_metrics(out, ty, num_classes=data.num_classes, class_counts=counts)["accuracy"]
                else:
                    acc = float((out.argmax(1) == ty).float().mean())
        spent["eval"] += time.thread_time() - c
    return time.perf_counter() - t0, time.process_time() - c0, acc, spent["train"], spent["eval"]


def serve(args) -> None:
    """A worker: warm up, then answer one JSON line per request line (``mixcli K`` or ``bare K``)."""
    import torch

    import mixcli

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mixcli-overhead-"))
    exp = work / "overhead.yaml"
    exp.write_text(CONFIG.format(epochs=args.epochs))
    metrics = args.bare_eval == "metrics"
    mixcli_round(exp, work, -1)
    bare_round(1, metrics)
    print(json.dumps({"ready": mixcli.__file__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        what, k = line.split()
        wall, cpu, acc, train, ev = (mixcli_round(exp, work, int(k)) if what == "mixcli"
                                     else bare_round(args.epochs, metrics))
        print(json.dumps({"wall": wall, "cpu": cpu, "acc": acc, "train": train, "eval": ev,
                          "rest": cpu - train - ev}), flush=True)


# ------------------------------------------------------------------------------------------- the parent
def extract(rev: str, dest: Path) -> Path:
    """``mixcli`` and the built-in plugins (as ``mixcli_plugins``) of ``rev`` under ``dest``."""
    for part, name in (("mixcli", "mixcli"), ("plugins", "mixcli_plugins")):
        blob = subprocess.run(["git", "archive", rev, part], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(blob)) as tar:
            tar.extractall(dest / "_x", filter="data")
        (dest / "_x" / part).rename(dest / name)
    return dest


class Worker:
    def __init__(self, tree: Path, args) -> None:
        self.tree = tree
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--epochs", str(args.epochs),
               "--threads", str(args.threads), "--bare-eval", args.bare_eval]
        # (cwd: not the repository root, whose mixcli/ would shadow an extracted tree's)
        self.proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        hello = self._read()
        if not hello["ready"].startswith(str(tree / "mixcli")):
            raise SystemExit(f"the worker for {tree} imported {hello['ready']}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker for {self.tree} stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, what: str, k: int) -> dict:
        self.proc.stdin.write(f"{what} {k}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for all (default 1, mixcli's default)")
    ap.add_argument("--before", default="main", help="git revision whose mixcli to time too ('none': skip)")
    ap.add_argument("--bare-eval", choices=("metrics", "accuracy"), default="metrics",
                    help="what the bare loop computes after each epoch (default: the metrics mixcli records)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workers = {"after": Worker(ROOT, args)}
        if args.before != "none":
            workers["before"] = Worker(extract(args.before, Path(tmp) / "before"), args)
        variants = [("bare", workers["after"], "bare"), ("mixcli", workers["after"], "mixcli")]
        if "before" in workers:
            variants.append((f"mixcli {args.before}", workers["before"], "mixcli"))
        res = {name: [] for name, _, _ in variants}
        for k in range(args.rounds):
            for name, worker, what in variants[k % len(variants):] + variants[:k % len(variants)]:
                res[name].append(worker.ask(what, k))
        for w in workers.values():
            w.close()
    load1 = os.getloadavg()
    med = {n: {key: statistics.median(r[key] for r in rs) for key in ("wall", "cpu", "train", "eval", "rest")}
           for n, rs in res.items()}
    print(f"digits erm job, cnn width 16, {args.epochs} epochs, {args.threads} torch thread(s), median of "
          f"{args.rounds} alternating rounds (end to end, data loading included); {os.cpu_count()} cores, load "
          f"average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end")
    print(f"{'':<16}{'median s':>10}{'min s':>8}{'max s':>8}{'CPU s':>8}{'test acc':>10}"
          f"{'wall / bare':>13}{'CPU / bare':>12}{'CPU s: train':>14}{'eval':>7}{'rest':>7}")
    for name in res:
        walls = [r["wall"] for r in res[name]]
        m = med[name]
        print(f"{name:<16}{m['wall']:>10.2f}{min(walls):>8.2f}{max(walls):>8.2f}{m['cpu']:>8.2f}"
              f"{100 * res[name][-1]['acc']:>9.2f}%{m['wall'] / med['bare']['wall']:>12.3f}x"
              f"{m['cpu'] / med['bare']['cpu']:>11.3f}x{m['train']:>14.3f}{m['eval']:>7.3f}{m['rest']:>7.3f}")
    print("goal: mixcli / bare <= 1.05x (CPU time; wall time is noisier on a shared machine). Per round, CPU "
          "mixcli / bare: " + ", ".join(f"{m['cpu'] / b['cpu']:.2f}" for m, b in zip(res["mixcli"], res["bare"])))
    print("CPU s split (medians): train = the epochs' optimizer steps, eval = the per-epoch evaluation (both the "
          "training thread's CPU), rest = everything else of the process: loading and building, and for mixcli "
          "the files, checkpoints and bookkeeping (writer thread included)")
    print("the bare loop evaluates val and test after every epoch like mixcli, "
          + ("computing the same metrics (mixcli.metrics.classification_metrics)" if args.bare_eval == "metrics"
             else "computing the accuracy only (mixcli computes all its metrics)")
          + "; unlike mixcli it writes no file (config, runs row, epochs table, checkpoint) and uses "
            "F.cross_entropy on the labels (mixcli's erm: the soft_ce loss plugin on the method's output)")


if __name__ == "__main__":
    main()
