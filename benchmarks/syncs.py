"""Host synchronisations and host-to-device copies per training step, for every method (mixcli.training.hostsync).

Each method runs the engine's hot loop (the next batch from the device-resident data, its step, the LR
schedule, the loss summed on the device) on the digits-sized data of the tests (uint8 1x8x8 images, crop
and flip augmentation, the ``cnn`` model); after ``--warmup`` steps, ``--steps`` steps are counted. Counted
on any device, the CPU included: a sync is an operation the host waits for on CUDA (``.item()``, ``bool``,
``.cpu()``, data-dependent shapes such as ``nonzero`` or a boolean mask); a copy is a tensor made from host
data (a Python number or list, a numpy array), a host-to-device copy on CUDA. With ``--where`` each row
lists the call sites.

    python benchmarks/syncs.py [--device cpu] [--where]
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from mixcli.api import DataBundle, Split
from mixcli.training.engine import pick_device
from mixcli.training.hostsync import engine_steps

#: (label, method, options, loss, model, model options)
VARIANTS = [
    ("erm", "erm", {}, "soft_ce"), ("mixup", "mixup", {"alpha": 1.0}, "soft_ce"),
    ("mixup (elem, switch)", "mixup", {"alpha": 1.0, "cutmix_alpha": 1.0, "mode": "elem"}, "soft_ce"),
    ("mixup partners: dataset", "mixup", {"alpha": 1.0, "partners": "dataset"}, "soft_ce"),
    ("cutmix", "cutmix", {"alpha": 1.0}, "soft_ce"), ("fmix", "fmix", {}, "soft_ce"),
    ("resizemix", "resizemix", {}, "soft_ce"), ("saliencymix", "saliencymix", {}, "soft_ce"),
    ("gridmix", "gridmix", {}, "soft_ce"), ("smoothmix", "smoothmix", {}, "soft_ce"),
    ("manifold_mixup", "manifold_mixup", {}, "soft_ce"), ("alignmix", "alignmix", {}, "soft_ce"),
    ("regmixup", "regmixup", {}, "soft_ce"), ("cutmix + decoupled", "cutmix", {"alpha": 0.2}, "decoupled"),
    ("snapmix", "snapmix", {}, "soft_ce"), ("puzzlemix", "puzzlemix", {}, "soft_ce"),
    ("automix", "automix", {}, "soft_ce"),
    ("cutmix + sumix", "cutmix", {"alpha": 0.2}, "sumix"),  # the ViT mixers: tests/plugins/test_smmix.py
]


def data(n: int = 256) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return DataBundle("classification", Split(x, y), Split(x[:32].clone(), y[:32].clone()), num_classes=10,
                      mean=(0.3,), std=(0.3,), augment=True, pad=1, flip=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--where", action="store_true", help="list the call sites of each row's syncs and copies")
    args = ap.parse_args()
    device = pick_device(args.device)
    d = data()
    print(f"device {device}, cnn on 1x8x8, batch {args.batch_size}, {args.steps} steps counted after "
          f"{args.warmup}\n\n{'method':<26}{'syncs/step':>11}{'copies/step':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, opts, loss in VARIANTS:
            try:
                c = engine_steps(method, opts, d, device, loss=loss, batch_size=args.batch_size,
                                 warmup=args.warmup, steps=args.steps, artifacts_dir=tmp, where=args.where)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{label:<26} error: {type(exc).__name__}: {exc}")
                continue
            print(f"{label:<26}{c.syncs / args.steps:>11.1f}{c.copies / args.steps:>12.1f}", flush=True)
            if args.where:
                for site, k in sorted(c.where().items(), key=lambda kv: -kv[1]):
                    print(f"    {k / args.steps:>5.1f}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
