"""Evaluator plugins in a run: their metric declarations, and the hook the engine calls after an evaluation.

Experiment files list evaluators under ``eval.extra`` (validated by :mod:`mixcli.config.spec`); they run after the
regular evaluation of the final epoch, and of every ``eval.extra_every``-th epoch when that is set. Each
returns the metrics its class declares (``Evaluator.metrics``); they are recorded as ``test_<name>`` in the
epochs table (and ``{final,best}_test_<name>`` in the runs table), because the store's fixed schema has one
column per declared metric of every *installed* evaluator (:func:`evaluator_metrics`).

An evaluator runs with the model in eval mode, inside :func:`untouched`, which restores afterwards exactly
what training depends on: every module's train/eval flag, the global torch (CPU and CUDA), numpy and Python
RNG states and the data generator. Evaluators draw their own random numbers from a private generator seeded
from (run seed, epoch, evaluator name), so a run with evaluators trains exactly like one without, and a
resumed run stays identical.
"""
from __future__ import annotations

import contextlib
import math
import random
import zlib

import numpy as np
import torch

from ..api import EvalContext, Evaluator, PluginError
from ..errors import MixcliError
from ..metrics import classification_metrics, regression_metrics
from ..registry import REGISTRY
from .callbacks import Callback


# ------------------------------------------------------------------------------------------- state guard
@contextlib.contextmanager
def untouched(model: torch.nn.Module, generator: torch.Generator | None = None):
    """Run the body with ``model`` in eval mode, then restore every module's train/eval flag and the global
    torch CPU/CUDA, numpy and Python RNG states (and ``generator``'s, the data generator) as they were."""
    modes = [(m, m.training) for m in model.modules()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    gen = generator.get_state() if generator is not None else None
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if gen is not None:
            generator.set_state(gen)


def private_generator(device: torch.device, seed: int, epoch: int, name: str) -> torch.Generator:
    """A generator on ``device`` seeded from (run seed, epoch, evaluator name), independent of training's."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + zlib.crc32(name.encode())) % (2 ** 63))
    return g


# ----------------------------------------------------------------------------------- the regular metrics
@torch.no_grad()
def evaluate(model, dd, split: str, task: str, batch_size: int, autocast) -> dict:
    """Metrics of ``model`` on one split of ``dd`` (a :class:`mixcli.data.device.DeviceData`; the metrics:
    :mod:`mixcli.metrics`)."""
    model.eval()
    outs, ys = [], []
    for x, y in dd.eval_batches(split, batch_size):
        with autocast():
            outs.append(model(x).float())
        ys.append(y)
    out, y = torch.cat(outs), torch.cat(ys)
    if task == "classification":
        return classification_metrics(out, y, num_classes=dd.data.num_classes, class_counts=dd.class_counts)
    s = dd.splits[split]
    return regression_metrics(out.view(y.shape), y, domain=s.domain)


# ---------------------------------------------------------------------------------------- evaluator plugins
class Evaluations(Callback):
    """The evaluators of one run (``cfg["eval"]["extra"]``), built once; after each regular evaluation
    (:meth:`on_evaluate`) they add their metrics to the epoch's row when the epoch is due."""

    def __init__(self, cfg: dict, dd, autocast, artifacts_dir, epochs: int) -> None:
        conf = cfg["eval"]
        self.specs = list(conf.get("extra") or [])
        self.every = conf.get("extra_every")
        self.cfg, self.dd, self.autocast, self.epochs = cfg, dd, autocast, epochs
        self.artifacts_dir = artifacts_dir
        self.plugins: list[tuple[str, Evaluator]] = []
        for spec in self.specs:
            cls = REGISTRY.get("evaluators", spec["name"])
            try:
                ev = cls(**{k: v for k, v in spec.items() if k != "name"})
                ev.check(dd.data)
                self.plugins.append((spec["name"], ev))
            except PluginError as exc:
                raise MixcliError(f"evaluator '{spec['name']}': {exc}") from None

    def due(self, epoch: int) -> bool:
        return bool(self.plugins) and (epoch == self.epochs or (self.every is not None and epoch % self.every == 0))

    def context(self, name: str, epoch: int) -> EvalContext:
        dd = self.dd
        return EvalContext(
            task=self.cfg["task"], num_classes=dd.data.num_classes, device=dd.device, data=dd.data,
            splits=dd.splits, images=dd.images, batch_size=self.cfg["eval"]["batch_size"], epoch=epoch,
            epochs=self.epochs, seed=self.cfg["seed"], name=name,
            generator=private_generator(dd.device, self.cfg["seed"], epoch, name), autocast=self.autocast,
            to_input=(lambda p: dd.normalize(p * 255.0)) if dd.images else (lambda p: p),
            artifacts_dir=self.artifacts_dir)

    def on_evaluate(self, run, row: dict) -> None:
        row.update(self.after_eval(run.model, row["epoch"]))

    def after_eval(self, model: torch.nn.Module, epoch: int) -> dict[str, float]:
        """``{"test_<metric>": value}`` of every evaluator when ``epoch`` is due, else ``{}``."""
        if not self.due(epoch):
            return {}
        row: dict[str, float] = {}
        for name, ev in self.plugins:
            with untouched(model, self.dd.generator):
                try:
                    out = ev(model, self.context(name, epoch))
                except PluginError as exc:
                    raise MixcliError(f"evaluator '{name}': {exc}") from None
            declared = {i.name for i in type(ev).metrics}
            for k, v in out.items():
                if k not in declared:
                    raise MixcliError(f"evaluator '{name}' returned metric '{k}', which its class does not "
                                      f"declare (declared: {', '.join(sorted(declared))})")
                row[f"test_{k}"] = float(v) if v is not None else math.nan
        return row
