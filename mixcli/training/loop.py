"""One training step and the pieces of the epoch loop: the step budget, the batches, the train mode, and
``torch.compile`` of the model's stages.

Training options used here (see :mod:`mixcli.config.init_from` for their validation):
``train.iterations`` / ``iterations_per_epoch`` (:class:`Budget`), ``train.freeze_bn`` (:func:`train_mode`,
:func:`freeze_bn_params`), ``train.precision`` (:func:`autocast_for`), ``train.compile``
(:func:`compile_stages`).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..api import Context, MixOutput, begin_step


def autocast_for(device: torch.device, bf16: bool):
    """A factory of autocast contexts: bf16 when asked for, else a no-op (``contextlib.nullcontext``: an
    ``autocast(enabled=False)`` costs a few microseconds per step for nothing)."""
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step(model, method, loss_fn, batch, ctx: Context, opt, autocast) -> torch.Tensor:
    """One optimizer step: the method's forward (plain training when ``method`` is None), its loss (or the
    loss the method set itself), backward, update. Returns the detached float32 loss (no host sync). The
    benchmarks time exactly this function."""
    begin_step(ctx, batch)  # the clean batch for losses that need it (sumix)
    with autocast():
        out = method(model, batch, ctx) if method is not None else MixOutput.unmixed(model(batch.x), batch.y)
        loss = out.loss if out.loss is not None else loss_fn(out, ctx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().float()


def _batchnorms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_params(model: nn.Module) -> None:
    """BatchNorm affine parameters are not trained (call before building the optimizer)."""
    for m in _batchnorms(model):
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, with BatchNorm layers kept in eval mode (frozen statistics) when ``freeze_bn``."""
    model.train()
    if freeze_bn:
        for m in _batchnorms(model):
            m.eval()


@dataclass(frozen=True)
class Budget:
    """How a run's optimizer steps are cut into epochs."""

    epochs: int
    per_epoch: int
    total: int

    def steps(self, epoch: int) -> int:
        return min(self.per_epoch, self.total - (epoch - 1) * self.per_epoch)


def budget(train: dict, steps_per_pass: int) -> Budget:
    n = train.get("iterations")
    if not n:
        return Budget(train["epochs"], steps_per_pass, train["epochs"] * steps_per_pass)
    per = train.get("iterations_per_epoch") or steps_per_pass
    return Budget(math.ceil(n / per), per, n)


def train_steps(dd, batch_size: int, n: int):
    """``n`` training batches: shuffled passes over the training set, the last pass cut short."""
    while n > 0:
        k = min(n, dd.steps_per_epoch(batch_size))
        yield from itertools.islice(dd.train_batches(batch_size), k)
        n -= k


def compile_stages(model) -> None:
    """``torch.compile`` each stage in place, so that ``forward_to``/``forward_from`` at any position run
    compiled code (the pool and the classifier stay eager).

    All stages share one code object, and dynamo's recompile limit (8 by default) counts guard variants per
    code object: stages x (train, eval) x (batch shapes) would exceed it and silently fall back to eager.
    The limit is raised to cover them.
    """
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 8 * len(model.stages)))
    for i, stage in enumerate(model.stages):
        model.stages[i] = torch.compile(stage)


def _uncompiled(state: dict) -> dict:
    """Strip torch.compile's ``_orig_mod.`` prefixes so checkpoints load into a plain model."""
    sd = state["model"]
    state["model"] = {k.replace("._orig_mod", ""): v for k, v in sd.items()}
    return state
