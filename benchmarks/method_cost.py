"""Per-step cost of each mixing method relative to erm: same model, same batch, same optimizer step.

A training step is what the engine does: the method's forward (with its mixing), the loss (``out.loss`` or
the loss plugin), backward and an SGD step (lr 0.1, momentum 0.9, nesterov, weight decay 5e-4). Every
method trains its own copy of the same initial weights on one fixed batch of CIFAR-sized random data
(normalized, ``--shape``, 10 classes); nothing is downloaded. After ``--warmup`` steps each, the methods are
timed in ``--rounds`` interleaved rounds of ``--steps`` steps (the device synchronized around each round),
so slow drifts of the machine hit every method alike; the median round gives ms/step and the ratio to erm.
Defaults: the ``cnn`` model (fp32) on digits-sized 1x8x8 images on CPU (its last map is 4x4, r = 16, like
ResNet-18's on CIFAR), ``resnet18`` (bf16 autocast, channels_last) on 3x32x32 images on CUDA.

Note: alignmix's Sinkhorn may stop early (batch-mean |du|_1 < 0.1, at most 100 iterations), so its cost
depends on the features; in practice (cnn on digits, all 15 epochs) it ran all 100 iterations. alignmix
compiles its Sinkhorn iterations on CUDA by default (``compile: cuda``); the "compiled" row forces it on
any device (the compilation itself happens in the warm-up).

The dynamic methods (snapmix: a CAM forward; puzzlemix: a saliency forward/backward, graph cuts on the CPU
and two transports; automix: the momentum encoder's feature and mixed forwards, two forwards of the model and
the MixBlock) cost more than one forward/backward; OpenMixup reports PuzzleMix at about 2.4x an erm epoch
and AutoMix at about 2.2x mixup's time (DeiT-S, CIFAR-100). transmix, tokenmix, mixpro and smmix need a
ViT (``--model timm --model-opts '{arch: vit_tiny_patch16_224, img_size: 32, patch_size: 4}'``); on a CNN
their rows are skipped.

    python benchmarks/method_cost.py --device cpu
    python benchmarks/method_cost.py --device cuda --batch-size 128
    python benchmarks/method_cost.py --device cuda --model timm --only mixup,cutmix,transmix,tokenmix,mixpro,smmix \\
        --model-opts '{arch: vit_tiny_patch16_224, img_size: 32, patch_size: 4}'
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import yaml

from mixcli.api import Batch, Context, DataBundle, Split
from mixcli.training.engine import autocast_for, pick_device, train_step
from mixcli.errors import MixcliError
from mixcli.registry import REGISTRY

#: (label, method, options, loss)
VARIANTS = [
    ("erm", "erm", {}, "soft_ce"),
    ("mixup", "mixup", {"alpha": 1.0}, "soft_ce"),
    ("mixup+cutmix switch", "mixup", {"alpha": 1.0, "cutmix_alpha": 1.0}, "soft_ce"),
    ("cutmix", "cutmix", {"alpha": 1.0}, "soft_ce"),
    ("manifold_mixup", "manifold_mixup", {}, "soft_ce"),
    ("fmix", "fmix", {}, "soft_ce"),
    ("resizemix", "resizemix", {}, "soft_ce"),
    ("saliencymix", "saliencymix", {}, "soft_ce"),
    ("alignmix", "alignmix", {}, "soft_ce"),
    ("alignmix (OT branch only)", "alignmix", {"input_prob": 0.0}, "soft_ce"),
    ("alignmix (OT only, compiled)", "alignmix", {"input_prob": 0.0, "compile": "always"}, "soft_ce"),
    ("regmixup", "regmixup", {}, "soft_ce"),
    ("cutmix + decoupled loss", "cutmix", {"alpha": 0.2}, "decoupled"),
    ("gridmix", "gridmix", {}, "soft_ce"),
    ("smoothmix", "smoothmix", {}, "soft_ce"),
    ("snapmix", "snapmix", {}, "soft_ce"),
    ("puzzlemix", "puzzlemix", {}, "soft_ce"),
    ("puzzlemix (no transport)", "puzzlemix", {"transport": False}, "soft_ce"),
    ("automix", "automix", {}, "soft_ce"),
    ("transmix (ViTs only)", "transmix", {}, "soft_ce"),
    # mdyr: plain mixup before bootstrap_from; bootstrapping adds two no-grad forwards of the batch (train and
    # eval mode) per step, the same for hard and soft (soft from epoch 1 takes w = 0.5 without a fitted
    # mixture); the once-per-epoch loss-tracking pass over the training set is not in a step's cost
    ("mdyr (mixup phase)", "mdyr", {}, "soft_ce"),
    ("mdyr (bootstrapping)", "mdyr", {"bootstrap": "soft", "bootstrap_from": 1}, "soft_ce"),
    ("tokenmix (ViTs only)", "tokenmix", {}, "soft_ce"),
    ("tokenmix, area target (ViTs)", "tokenmix", {"target": "area"}, "soft_ce"),
    ("mixpro (ViTs only)", "mixpro", {}, "soft_ce"),
    ("smmix (ViTs only)", "smmix", {}, "soft_ce"),
    ("cutmix + sumix loss", "cutmix", {"alpha": 0.2}, "sumix"),
    ("samix", "samix", {}, "soft_ce"),
    ("adautomix (3 images)", "adautomix", {}, "soft_ce"),
    ("adautomix (2 images)", "adautomix", {"mix_samples": 2}, "soft_ce"),
    ("comixup", "comixup", {}, "soft_ce"),
    ("guidedmixup (ap)", "guidedmixup", {"saliency": "ap", "mix_prob": 1.0}, "soft_ce"),
    ("guidedmixup (sr)", "guidedmixup", {"saliency": "sr", "mix_prob": 1.0}, "soft_ce"),
]


class Runner:
    """One method with its own model copy and optimizer, stepping on a fixed batch."""

    def __init__(self, label, method, opts, loss, data, batch, init_state, args, device):
        self.label = label
        self.model = REGISTRY.get("models", args.model)(data.input_shape, 10, **args.model_opts).to(device)
        self.model.load_state_dict(init_state)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method = REGISTRY.get("methods", method)(**opts)
        self.loss_fn = REGISTRY.get("losses", loss)()
        self.ctx = Context(task="classification", num_classes=10, device=device, rng=np.random.default_rng(0),
                           train=data.train.to(device), fetch=lambda i: (batch.x[i % len(batch.y)], batch.y[i % len(batch.y)]),
                           epochs=1, data=data, model=self.model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        self.ctx.extra["optimizer"] = self.opt  # as the engine gives it (learned mixers, smmix follow it)
        self.method.setup(self.ctx)
        self.method.start_epoch(1, self.ctx)
        self.autocast = autocast_for(device, device.type == "cuda" and not args.fp32)
        self.batch, self.device = batch, device
        self.loss_sum = torch.zeros((), device=device)
        self.times: list[float] = []

    def step(self) -> None:
        self.model.train()
        self.loss_sum += train_step(self.model, self.method, self.loss_fn, self.batch, self.ctx, self.opt,
                                    self.autocast)

    def timed(self, steps: int, clock=time.perf_counter) -> None:
        sync(self.device)
        t0 = clock()
        for _ in range(steps):
            self.step()
        sync(self.device)
        self.times.append((clock() - t0) / steps)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--model", default=None, help="model plugin [cnn on CPU, resnet18 on CUDA]")
    ap.add_argument("--batch-size", type=int, default=None, help="[64 on CPU, 128 on CUDA]")
    ap.add_argument("--shape", default=None, help="input C,H,W [1,8,8 on CPU, 3,32,32 on CUDA]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round [5 on CPU, 50 on CUDA]")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds [5 on CPU, 7 on CUDA]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per method [3 on CPU, 30 on CUDA]")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--model-opts", default="{}",
                    help="model options as a YAML mapping, e.g. '{arch: vit_tiny_patch16_224, img_size: 32, "
                         "patch_size: 4}' with --model timm")
    ap.add_argument("--only", default=None,
                    help="comma-separated labels or method names to time (erm is always included)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="wall time, or the CPU time of this process (CPU only: steadier on a shared machine)")
    args = ap.parse_args(argv)
    args.model_opts = yaml.safe_load(args.model_opts) or {}
    if not isinstance(args.model_opts, dict):
        raise SystemExit(f"--model-opts must be a YAML mapping, got {args.model_opts!r}")
    try:
        device = pick_device(args.device)
    except MixcliError as exc:
        raise SystemExit(str(exc))
    cuda = device.type == "cuda"
    args.model = args.model or ("resnet18" if cuda and "resnet18" in REGISTRY.names("models") else "cnn")
    args.batch_size = args.batch_size or (128 if cuda else 64)
    shape = tuple(int(v) for v in (args.shape or ("3,32,32" if cuda else "1,8,8")).split(","))
    args.steps = args.steps or (50 if cuda else 5)
    args.rounds = args.rounds or (7 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True

    g = torch.Generator().manual_seed(0)
    n = args.batch_size
    x8 = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = DataBundle("classification", Split(x8, y), Split(x8[:10], y[:10]), num_classes=10)
    x = ((x8.float() / 255 - 0.5) / 0.25).to(device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    batch = Batch(x, y.to(device), torch.arange(n, device=device))
    torch.manual_seed(0)
    init_state = REGISTRY.get("models", args.model)(data.input_shape, 10, **args.model_opts).state_dict()

    runners = []
    only = None if args.only is None else {"erm", *(v.strip() for v in args.only.split(","))}
    for label, method, opts, loss in VARIANTS:
        if only is not None and label not in only and method not in only:
            continue
        if method not in REGISTRY.names("methods") or loss not in REGISTRY.names("losses"):
            print(f"note: {label}: '{method}' or loss '{loss}' is not registered here; skipped")
            continue
        try:
            runners.append(Runner(label, method, opts, loss, data, batch, init_state, args, device))
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"note: {label}: {type(exc).__name__}: {exc}; skipped")
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"model {args.model}, batch {n} of {'x'.join(map(str, shape))}, {args.rounds} rounds x {args.steps} timed steps after "
          f"{args.warmup} warm-up steps, {'bf16 autocast + channels_last' if cuda and not args.fp32 else 'fp32'}, "
          f"{args.clock} clock",
          flush=True)
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    if args.clock == "process" and cuda:
        raise SystemExit("--clock process measures CPU time; use the wall clock on CUDA")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    for _ in range(args.rounds):
        for r in runners:
            r.timed(args.steps, clock)
    base = statistics.median(runners[0].times)
    print(f"\n{'method':<28} {'ms/step':>9} {'vs erm':>8}")
    for r in runners:
        if not torch.isfinite(r.loss_sum):
            raise SystemExit(f"{r.label}: the loss is not finite")
        t = statistics.median(r.times)
        print(f"{r.label:<28} {1000 * t:>9.2f} {t / base:>7.2f}x")


if __name__ == "__main__":
    main()
