"""Count host synchronisations and host-to-device copies of a block of torch code, on any device (the CPU
included, where nothing actually waits): what the block would cost a CUDA stream.

A *sync* is an operation whose result the host must read, so that on CUDA the host waits for the device:

- at the dispatcher (``TorchDispatchMode``): ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``float(t)``, ``int(t)``, ``if t:``), ``aten.is_nonzero``, ``aten.equal``, and the ops whose output size
  depends on the data: ``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without
  ``output_size``, ``bincount``, ``histc`` and boolean-mask indexing (``x[mask]``, ``x[mask] = v``);
- at the Python API (``TorchFunctionMode``: they dispatch nothing on a CPU tensor): ``.tolist()``,
  ``.numpy()`` and ``.cpu()``.

A *copy* is a tensor made from host data (a Python number or list, a numpy array: ``torch.tensor``,
``torch.as_tensor``, ``torch.from_numpy``; the dispatcher sees ``aten.lift_fresh``). On CUDA each one that
meets the device is a host-to-device copy from pageable memory. Tensors made on the device
(``torch.full``, ``torch.rand(..., generator=g)``) are neither.

    with count() as c:
        step()
    c.syncs, c.copies, c.where()   # where(): {"sync nonzero at plugins/methods/x.py:12": 3, ...}
"""
from __future__ import annotations

import collections
import traceback
import weakref
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: packets of aten ops that read a device value on the host
_SYNC_PACKETS = ("_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "_unique", "_unique2",
                 "unique_dim", "unique_consecutive", "unique_dim_consecutive", "bincount", "histc", "argwhere")
_COPY_PACKETS = ("lift_fresh", "lift_fresh_copy")
_INDEX_PACKETS = ("index", "index_put", "index_put_", "_index_put_impl_")
#: Tensor methods that read a tensor on the host without dispatching on the CPU
_HOST_READS = {"tolist", "numpy", "cpu"}

_HERE = __file__
_API = __file__.replace("hostsync.py", "api.py")


@dataclass
class Event:
    kind: str      # "sync" or "copy"
    op: str
    where: str     # the innermost frame outside torch and this module


@dataclass
class Counts:
    events: list[Event] = field(default_factory=list)
    record_where: bool = True

    @property
    def syncs(self) -> int:
        return sum(e.kind == "sync" for e in self.events)

    @property
    def copies(self) -> int:
        return sum(e.kind == "copy" for e in self.events)

    def where(self) -> dict[str, int]:
        return dict(collections.Counter(f"{e.kind} {e.op} at {e.where}" for e in self.events))

    def add(self, kind: str, op: str) -> None:
        self.events.append(Event(kind, op, _caller() if self.record_where else ""))


def _caller() -> str:
    for fr in reversed(traceback.extract_stack()):
        f = fr.filename
        if f in (_HERE, _API) or "/torch/" in f or f.startswith("<"):  # (api: to_device, permutation, ...)
            continue
        parts = f.split("/")
        return f"{'/'.join(parts[-3:])}:{fr.lineno}"
    return "?"


def _packet(func) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    if isinstance(idx, (list, tuple)):
        return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx)
    return False


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts
        # the result of the last ``.cpu()``: its next read (``.numpy()``, ``.tolist()``, ``.item()``) is free.
        # One read only: on the CPU ``.cpu()`` returns the tensor itself, which stays a "device" tensor.
        self.host: dict[int, weakref.ref] = {}
        self.scalar_setitem = 0  # inside ``t[...] = <Python number>``: the number is filled on the device

    def is_host(self, t) -> bool:
        ref = self.host.pop(id(t), None)
        return ref is not None and ref() is t

    def mark_host(self, t) -> None:
        self.host[id(t)] = weakref.ref(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _packet(func)
        if name in _SYNC_PACKETS:
            if not (name == "_local_scalar_dense" and args and self.is_host(args[0])):
                self.counts.add("sync", name)
        elif name == "repeat_interleave" and func is not aten.repeat_interleave.self_int \
                and (kwargs or {}).get("output_size") is None:
            self.counts.add("sync", name)  # repeats given as a tensor: the output size is read on the host
        elif name in _INDEX_PACKETS and _bool_index(args):
            self.counts.add("sync", f"{name} (boolean mask)")
        elif name in _COPY_PACKETS and not self.scalar_setitem:
            self.counts.add("copy", name)
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, counts: Counts, dispatch: _Dispatch) -> None:
        super().__init__()
        self.counts, self.dispatch = counts, dispatch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_READS and args and isinstance(args[0], torch.Tensor):
            if self.dispatch.is_host(args[0]):
                return func(*args, **(kwargs or {}))
            self.counts.add("sync", name)
            out = func(*args, **(kwargs or {}))
            if name == "cpu" and isinstance(out, torch.Tensor):
                self.dispatch.mark_host(out)
            return out
        elif name == "__setitem__" and len(args) == 3 and isinstance(args[2], (bool, int, float)):
            self.dispatch.scalar_setitem += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.dispatch.scalar_setitem -= 1
        return func(*args, **(kwargs or {}))


class count:
    """``with count() as c:`` counts the syncs and copies of the block (``where=False``: no call sites,
    cheaper)."""

    def __init__(self, where: bool = True) -> None:
        self.counts = Counts(record_where=where)

    def __enter__(self) -> Counts:
        self._d = _Dispatch(self.counts)
        self._f = _Function(self.counts, self._d)
        self._f.__enter__()
        self._d.__enter__()
        return self.counts

    def __exit__(self, *exc) -> None:
        self._d.__exit__(*exc)
        self._f.__exit__(*exc)


def engine_steps(method: str, opts: dict, data, device, loss: str = "soft_ce", model: str = "cnn",
                 model_opts: dict | None = None, batch_size: int = 32, warmup: int = 2, steps: int = 3,
                 seed: int = 0, artifacts_dir=None, where: bool = True) -> Counts:
    """The syncs and copies of ``steps`` training steps of ``method`` after ``warmup`` steps, exactly as the
    engine's hot loop runs them: the next batch from the device data, :func:`mixcli.training.loop.train_step`, the
    LR schedule's step and the loss summed on the device."""
    import numpy as np

    from ..api import Context
    from ..data.device import DeviceData
    from ..registry import REGISTRY
    from .loop import autocast_for, train_step, train_steps

    dd = DeviceData(data, device, seed)
    torch.manual_seed(seed)
    net = REGISTRY.get("models", model)(data.input_shape, data.out_dim, **(model_opts or {})).to(device)
    m = REGISTRY.get("methods", method)(**opts)
    loss_fn = REGISTRY.get("losses", loss)()
    ctx = Context(task=data.task, num_classes=data.num_classes, device=device, rng=np.random.default_rng(seed),
                  train=dd.train, fetch=dd.fetch, epochs=1, data=data, model=net, eval_batches=dd.eval_batches,
                  artifacts_dir=artifacts_dir)
    m.setup(ctx)
    m.start_epoch(1, ctx)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    autocast = autocast_for(device, device.type == "cuda")
    batches = train_steps(dd, batch_size, warmup + steps)
    loss_sum = torch.zeros((), device=device)
    net.train()

    def one() -> None:
        nonlocal loss_sum
        batch = next(batches)
        loss_sum += train_step(net, m, loss_fn, batch, ctx, opt, autocast)
        sched.step()
        ctx.step += 1

    for _ in range(warmup):
        one()
    with count(where) as c:
        for _ in range(steps):
            one()
    if not torch.isfinite(loss_sum):
        raise RuntimeError(f"{method}: the loss is not finite")
    return c
