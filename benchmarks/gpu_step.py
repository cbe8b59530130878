"""The training step on CUDA in fp32 and bf16 autocast, eager and ``torch.compile``d (the engine's
``train.compile``: each stage compiled), timed with CUDA events, side by side.

The step is :func:`mixcli.training.engine.train_step` (what the engine runs) on a fixed batch of CIFAR-shaped random
data, channels_last, SGD with nesterov momentum; ``--methods`` each get every variant. After ``--warmup``
steps (compilation included there), ``--steps`` steps are timed between two CUDA events, in ``--rounds``
rounds; the median round is printed as ms/step and images/s, and each variant's ratio to eager fp32. The
host syncs and copies of one step are counted as well (mixcli.training.hostsync).

    python benchmarks/gpu_step.py [--model resnet18] [--batch-size 256] [--methods erm,mixup,cutmix]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from mixcli.api import Batch, Context, DataBundle, Split
from mixcli.training.engine import autocast_for, compile_stages, train_step
from mixcli.training.hostsync import count
from mixcli.registry import REGISTRY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--methods", default="erm,mixup,cutmix")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step: no CUDA device here")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    n = args.batch_size
    x8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = DataBundle("classification", Split(x8, y), Split(x8[:10], y[:10]), num_classes=10)
    x = ((x8.float() / 255 - 0.5) / 0.25).to(dev).contiguous(memory_format=torch.channels_last)
    batch = Batch(x, y.to(dev), torch.arange(n, device=dev))
    torch.manual_seed(0)
    init = REGISTRY.get("models", args.model)((3, 32, 32), 10).state_dict()
    variants = [("fp32", False, False), ("bf16", True, False)]
    if not args.no_compile:
        variants += [("fp32 compiled", False, True), ("bf16 compiled", True, True)]
    print(f"{torch.cuda.get_device_name()}: {args.model}, batch {n} of 3x32x32, channels_last, "
          f"{args.rounds} rounds x {args.steps} steps after {args.warmup} (CUDA events)")
    print(f"\n{'method':<10}{'variant':<16}{'ms/step':>9}{'img/s':>9}{'vs fp32':>9}{'syncs':>7}{'copies':>8}")
    for name in args.methods.split(","):
        base = None
        for label, bf16, compiled in variants:
            model = REGISTRY.get("models", args.model)((3, 32, 32), 10).to(dev)
            model.load_state_dict(init)
            model = model.to(memory_format=torch.channels_last)
            if compiled:
                compile_stages(model)
            method = REGISTRY.get("methods", name)()
            loss_fn = REGISTRY.get("losses", "soft_ce")()
            ctx = Context("classification", 10, dev, np.random.default_rng(0), data.train.to(dev),
                          lambda i: (batch.x[i % n], batch.y[i % n]), 1, data=data, model=model)
            method.setup(ctx)
            method.start_epoch(1, ctx)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
            autocast = autocast_for(dev, bf16)
            model.train()
            try:
                for _ in range(args.warmup):
                    train_step(model, method, loss_fn, batch, ctx, opt, autocast)
                with count(where=False) as c:
                    train_step(model, method, loss_fn, batch, ctx, opt, autocast)
                times = []
                for _ in range(args.rounds):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(args.steps):
                        train_step(model, method, loss_fn, batch, ctx, opt, autocast)
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b) / args.steps)
            except Exception as exc:  # noqa: BLE001 - e.g. a compile failure: reported, the others go on
                print(f"{name:<10}{label:<16} error: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            ms = statistics.median(times)
            base = base or ms
            print(f"{name:<10}{label:<16}{ms:>9.2f}{1000 * n / ms:>9.0f}{base / ms:>8.2f}x{c.syncs:>7}{c.copies:>8}",
                  flush=True)


if __name__ == "__main__":
    main()
