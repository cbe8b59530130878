"""Host synchronisations and host-to-device copies, counted on the CPU (mixcli.training.hostsync): the counter
itself, and zero syncs in the steady-state training step of every method whose step is static (puzzlemix's
graph cut runs on the host by design: exactly one device-to-host read per step)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mixcli.api import DataBundle, Split, to_device
from mixcli.training.hostsync import count, engine_steps

CPU = torch.device("cpu")


def test_the_counter_sees_each_kind_of_sync_and_copy():
    t = torch.randn(5)
    with count() as c:
        t.cpu().numpy()                        # one read (the .numpy() of a .cpu() result is free)
        t.sum().item()
        bool(t.sum() > 0)
        t[t > 0]                               # data-dependent shape
        t.nonzero()
        t.repeat_interleave(torch.ones(5, dtype=torch.long))
    assert c.syncs == 6 and c.copies == 0, c.where()
    with count() as c:
        torch.tensor([1.0, 2.0])
        torch.from_numpy(np.ones(3))
        to_device(np.arange(4), CPU)
        x = torch.zeros(3)
        x[:2] = 1.0                            # a Python number filled on the device: no copy
        t.repeat_interleave(2)                 # a host int: no sync
        torch.full((3,), 0.5) * t[:3]
    assert c.syncs == 0 and c.copies == 3, c.where()
    assert any("test_host_syncs.py" in site for site in c.where())


def digits_like(n: int = 128) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return DataBundle("classification", Split(x, y), Split(x[:16].clone(), y[:16].clone()), num_classes=10,
                      mean=(0.3,), std=(0.3,), augment=True, pad=1, flip=True)


STATIC = [("erm", {}, "soft_ce"), ("mixup", {"alpha": 1.0}, "soft_ce"),
          ("mixup", {"alpha": 1.0, "cutmix_alpha": 1.0, "mode": "elem"}, "soft_ce"),
          ("mixup", {"alpha": 1.0, "partners": "dataset"}, "soft_ce"),
          ("cutmix", {"alpha": 1.0}, "soft_ce"), ("cutmix", {"alpha": 0.2}, "decoupled"),
          ("fmix", {}, "soft_ce"), ("resizemix", {}, "soft_ce"), ("saliencymix", {}, "soft_ce"),
          ("gridmix", {}, "soft_ce"), ("smoothmix", {}, "soft_ce"), ("manifold_mixup", {}, "soft_ce"),
          ("alignmix", {}, "soft_ce"), ("regmixup", {}, "soft_ce"), ("snapmix", {}, "soft_ce"),
          ("automix", {}, "soft_ce")]


@pytest.mark.parametrize("method, opts, loss", STATIC, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(STATIC)])
def test_the_steady_state_step_of_every_static_method_never_syncs(method, opts, loss, tmp_path):
    c = engine_steps(method, opts, digits_like(), CPU, loss=loss, batch_size=32, warmup=2, steps=3,
                     artifacts_dir=tmp_path)
    assert c.syncs == 0, c.where()


def test_puzzlemix_reads_the_device_once_per_step(tmp_path):
    pytest.importorskip("gco")
    c = engine_steps("puzzlemix", {}, digits_like(), CPU, batch_size=32, warmup=1, steps=3, artifacts_dir=tmp_path)
    assert c.syncs == 3, c.where()
