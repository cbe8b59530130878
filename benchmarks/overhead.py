"""mixcli's training of one job against a bare PyTorch loop of the same model on the same data, side by side.

The job is the quickstart's erm job (digits, ``cnn`` width 16, ``--epochs`` epochs of batch 64, SGD with
nesterov momentum and weight decay, cosine schedule with a 1-epoch warm-up, val and test evaluated every
epoch). mixcli trains it through the engine (:func:`mixcli.training.engine.run_job`: the device-resident batches,
the method and loss plugins, an epoch checkpoint, the epochs and runs parquet files), into a fresh output
directory each round. The bare loop is what one writes by hand: the same uint8 tensors normalized per
batch, ``F.cross_entropy``, the same optimizer and schedule, and the same per-epoch evaluation, with no
files written. Both start from the same initial weights, with the same torch threads (``--threads``), and
alternate in ``--rounds`` rounds so that the machine's load hits both alike; the median round is printed
and the ratio (goal <= 1.05x on CPU), of wall time and of CPU time (steadier on a shared machine). Both are
timed end to end: loading the digits split (the same plugin), building the model, training, evaluating and,
for mixcli, every file it writes (``run_job``).

    python benchmarks/overhead.py [--epochs 15] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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
eval: {{every: 1}}
seeds: [0]
"""


def mixcli_round(exp_path: Path, work: Path, k: int) -> float:
    from mixcli.training import engine
    from mixcli.config.jobs import expand
    from mixcli.config.spec import load_experiment
    from mixcli.results.store import Store

    exp = load_experiment(exp_path, [])
    exp.out = work / f"mixcli-{k}"
    (job,) = expand(exp)
    store = Store(exp.out)
    t0, c0 = time.perf_counter(), time.process_time()
    row = engine.run_job(job, store, torch.device("cpu"))
    assert row["status"] == "finished"
    return time.perf_counter() - t0, time.process_time() - c0, float(row["final_test_accuracy"])


def bare_round(epochs: int, seed: int = 0) -> tuple[float, float, float]:
    from mixcli.registry import REGISTRY

    t0, c0 = time.perf_counter(), time.process_time()
    data = REGISTRY.get("datasets", "digits")().load()  # (the same split, as uint8 tensors)
    torch.manual_seed(seed)
    model = REGISTRY.get("models", "cnn")(data.input_shape, data.out_dim, width=16)
    x, y = data.train.x, data.train.y
    tests = [(s.x, s.y) for s in (data.val, data.test) if s is not None and len(s)]
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
        model.eval()
        with torch.no_grad():
            for tx, ty in tests:
                acc = sum(int((model(torch.addcmul(shift, tx[j:j + 256], scale)).argmax(1) == ty[j:j + 256]).sum())
                          for j in range(0, len(tx), 256)) / len(tx)
    return time.perf_counter() - t0, time.process_time() - c0, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1, mixcli's default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        exp = work / "overhead.yaml"
        exp.write_text(CONFIG.format(epochs=args.epochs))
        mixcli_round(exp, work, -1)  # warm-up: imports, plugin loading, first-use allocations
        bare_round(1)
        times = {"mixcli": [], "bare": []}
        cpu = {"mixcli": [], "bare": []}
        accs = {}
        for k in range(args.rounds):
            for name, fn in (("mixcli", lambda: mixcli_round(exp, work, k)),
                             ("bare", lambda: bare_round(args.epochs))):
                t, c, accs[name] = fn()
                times[name].append(t)
                cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"digits erm job, cnn width 16, {args.epochs} epochs, {args.threads} thread(s), median of "
          f"{args.rounds} alternating rounds (end to end, data loading included)")
    print(f"{'':<12}{'median s':>10}{'min s':>8}{'max s':>8}{'CPU s':>8}{'test acc':>10}")
    for k in ("bare", "mixcli"):
        print(f"{k:<12}{med[k]:>10.2f}{min(times[k]):>8.2f}{max(times[k]):>8.2f}{mcpu[k]:>8.2f}"
              f"{100 * accs[k]:>9.2f}%")
    print(f"mixcli / bare loop: wall {med['mixcli'] / med['bare']:.3f}x (goal <= 1.05x), CPU "
          f"{mcpu['mixcli'] / mcpu['bare']:.3f}x; wall per round: "
          + ", ".join(f"{m / b:.2f}" for m, b in zip(times["mixcli"], times["bare"])))


if __name__ == "__main__":
    main()
