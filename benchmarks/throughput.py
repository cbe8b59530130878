"""Training throughput: mixcli's device-resident data path vs a standard torchvision DataLoader pipeline.

Both paths train the same model (same initial weights), with the same batch size, optimizer (SGD, lr 0.1,
momentum 0.9, weight decay 5e-4, nesterov), mixed precision setting and *the same method plugin*; only the
data path differs:

(a) mixcli: the uint8 images live on the device (:class:`mixcli.data.device.DeviceData`); crop with 4-pixel
    reflect padding, flip and normalization run batched on the device.
(b) DataLoader: ``RandomCrop(32, padding=4, padding_mode='reflect')``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize`` per PIL image in ``--workers`` worker processes, then a (pinned) copy to
    the device.

Data: CIFAR-sized random uint8 images (``--images``, 32x32x3, 10 classes); nothing is downloaded. After
``--warmup`` steps, ``--steps`` steps are timed (the device is synchronized before and after), the two
paths alternating in ``--rounds`` rounds so that a change in the machine's load hits both alike. The first
row times the data paths alone (no model). Defaults: the ``cnn`` model on CPU, ``resnet18`` (bf16 autocast,
channels_last) on CUDA.

    python benchmarks/throughput.py --device cpu
    python benchmarks/throughput.py --device cuda --steps 200 --batch-size 256 --workers 8
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from mixcli.api import Batch, Context, DataBundle, Split
from mixcli.data.device import DeviceData
from mixcli.training.engine import autocast_for, compile_stages, pick_device, train_step
from mixcli.errors import MixcliError
from mixcli.registry import REGISTRY

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
METHODS = [("erm", {}), ("mixup", {"alpha": 1.0}), ("cutmix", {"alpha": 1.0}), ("alignmix", {})]


class PILImages(torch.utils.data.Dataset):
    """The uint8 (N, 3, H, W) array as PIL images through a torchvision transform, with the row index."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i]), i


def loader_batches(x, y, args, device):
    import torchvision.transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    dl = DataLoader(PILImages(x, y, tf), batch_size=args.batch_size, shuffle=True, drop_last=True,
                    num_workers=args.workers, pin_memory=device.type == "cuda",
                    persistent_workers=args.workers > 0)
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for xb, yb, ib in itertools.chain.from_iterable(itertools.repeat(dl)):
        yield Batch(xb.to(device, non_blocking=True, memory_format=memory), yb.to(device, non_blocking=True),
                    ib.to(device, non_blocking=True))


def mixcli_batches(dd: DeviceData, batch_size: int):
    while True:
        yield from dd.train_batches(batch_size)


def data_only(batches, args, device, n: int = 50) -> float:
    """Images per second of producing ``n`` training batches on the device, no model (after draining what
    the DataLoader's workers prefetched)."""
    for _ in range(2 * args.workers + 2):  # the DataLoader prefetches 2 batches per worker
        next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        b = next(batches)
    float(b.x[0, 0, 0, 0])  # wait for the last batch
    return n * args.batch_size / (time.perf_counter() - t0)


class Trainer:
    """One model + method + optimizer fed by one batch stream; accumulates its timed steps."""

    def __init__(self, spec, batches, dd: DeviceData, init_state, args, device) -> None:
        self.spec, self.batches, self.device, self.args = spec, batches, device, args
        model = REGISTRY.get("models", args.model)(dd.data.input_shape, 10).to(device)
        model.load_state_dict(init_state)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.method = REGISTRY.get("methods", spec[0])(**spec[1])
        self.loss_fn = REGISTRY.get("losses", "soft_ce")()
        self.ctx = Context(task="classification", num_classes=10, device=device, rng=np.random.default_rng(0),
                           train=dd.train, fetch=dd.fetch, epochs=1, data=dd.data, model=model)
        self.method.setup(self.ctx)
        self.method.start_epoch(1, self.ctx)
        if args.compile:
            compile_stages(model)
        self.model = model.train()
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        self.autocast = autocast_for(device, device.type == "cuda" and not args.fp32)
        self.loss_sum = torch.zeros((), device=device)
        self.seconds, self.steps = 0.0, 0

    def step(self) -> None:
        self.loss_sum += train_step(self.model, self.method, self.loss_fn, next(self.batches), self.ctx,
                                    self.opt, self.autocast)

    def timed(self, n: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.steps += n

    def images_per_second(self) -> float:
        if not torch.isfinite(self.loss_sum):
            raise SystemExit(f"{self.spec[0]}: the training loss is not finite")
        return self.steps * self.args.batch_size / self.seconds


def compare(spec, loader, dd, init_state, args, device) -> tuple[float, float]:
    """Images/s of (mixcli, DataLoader) for one method: warm-up, then the timed steps in ``--rounds``
    alternating rounds, so that a change in the machine's load affects both paths alike."""
    runs = [Trainer(spec, mixcli_batches(dd, args.batch_size), dd, init_state, args, device),
            Trainer(spec, loader, dd, init_state, args, device)]
    rounds = max(1, min(args.rounds, args.steps))
    for k in range(rounds):
        n = args.steps // rounds + (k < args.steps % rounds)
        for r in runs:
            for _ in range(args.warmup if k == 0 else 0):  # right before the first timed round: this also
                r.step()                                     # drains what the DataLoader prefetched meanwhile
            r.timed(n)
    return runs[0].images_per_second(), runs[1].images_per_second()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--model", default=None, help="model plugin [cnn on CPU, resnet18 on CUDA]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run [4 on CPU, 200 on CUDA]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first [1 on CPU, 30 on CUDA]")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader worker processes [number of CPU cores, at most 8]")
    ap.add_argument("--images", type=int, default=10_000, help="random 32x32x3 uint8 training images")
    ap.add_argument("--methods", default=",".join(m for m, _ in METHODS),
                    help="comma-separated subset of " + ", ".join(m for m, _ in METHODS))
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternate the two paths in this many rounds of timed steps [--steps on CPU, 1 on CUDA, "
                         "where the DataLoader's prefetched batches would flatter it after each pause]")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's stages (both paths)")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    args = ap.parse_args(argv)
    try:
        device = pick_device(args.device)
    except MixcliError as exc:
        raise SystemExit(str(exc))
    cuda = device.type == "cuda"
    args.model = args.model or ("resnet18" if cuda else "cnn")
    args.steps = args.steps or (200 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 1)
    args.workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    args.rounds = args.rounds or (1 if cuda else args.steps)
    if cuda:
        torch.backends.cudnn.benchmark = True

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, args.images)
    data = DataBundle("classification", Split(torch.from_numpy(x), torch.from_numpy(y)),
                      Split(torch.from_numpy(x[:10]), torch.from_numpy(y[:10])), num_classes=10,
                      mean=MEAN, std=STD, augment=True, pad=4, pad_mode="reflect", flip=True)
    dd = DeviceData(data, device, seed=0)
    torch.manual_seed(0)
    init_state = REGISTRY.get("models", args.model)(data.input_shape, 10).state_dict()

    wanted = args.methods.split(",")
    unknown = sorted(set(wanted) - {m for m, _ in METHODS})
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from "
                         + ", ".join(m for m, _ in METHODS))
    methods = []
    for name, opts in METHODS:
        if name not in wanted:
            continue
        if name not in REGISTRY.names("methods"):
            print(f"note: method '{name}' is not registered here; skipped")
            continue
        methods.append((name, opts))
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"model {args.model}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
          f"{args.images} images, DataLoader workers {args.workers}, "
          f"{'bf16 autocast + channels_last' if cuda and not args.fp32 else 'fp32'}"
          f"{', compiled' if args.compile else ''}")
    loader = loader_batches(x, y, args, device)
    a, b = data_only(mixcli_batches(dd, args.batch_size), args, device), data_only(loader, args, device)
    rows = [("data only", a, b)]
    print(f"  {'data only':<16} mixcli {a:>10,.0f} img/s   DataLoader {b:>10,.0f} img/s   {a / b:5.2f}x", flush=True)
    for spec in methods:
        a, b = compare(spec, loader, dd, init_state, args, device)
        rows.append((f"{spec[0]}" + "".join(f" {k}={v}" for k, v in spec[1].items()), a, b))
        print(f"  {rows[-1][0]:<16} mixcli {a:>10,.0f} img/s   DataLoader {b:>10,.0f} img/s   {a / b:5.2f}x",
              flush=True)
    print()
    print(f"{'method':<16} {'mixcli img/s':>14} {'DataLoader img/s':>18} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:<16} {a:>14,.0f} {b:>18,.0f} {a / b:>6.2f}x")


if __name__ == "__main__":
    main()
