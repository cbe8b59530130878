"""Jobs -> engine -> results: train and evaluate one resolved job, checkpointing every epoch.

:func:`run_job` reads as four steps: build (data, model, method, loss, optimizer, listeners), restore (the
checkpoint of an interrupted run), loop (epochs of steps, evaluation), record (the final runs row). The
listeners (:mod:`mixcli.training.callbacks`) do everything else: store writes, the best-epoch keeper, the
per-step log, evaluator plugins, live progress, logger plugins.

The engine knows no method, dataset or model by name: it builds them from the registry and talks to them
through :mod:`mixcli.api`. The hot loop does no host-device synchronization (losses are summed on the
device and read once per epoch); batches come from :class:`mixcli.data.device.DeviceData`.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..api import Context, DataBundle, PluginError
from ..data.device import DeviceData, check_bundle
from ..errors import MixcliError, RunFailed
from ..registry import REGISTRY
from ..config.jobs import Job
from ..results.selection import best_index
from ..results.store import SPLITS, Store
from .callbacks import Callbacks, Loggers, Progress, ProgressEvents, RunState
from .checkpoints import Keeper, StepLog, StoreWrites, evaluated, load_init, restore, restore_method
from .evaluate import Evaluations, evaluate
from .loop import (Budget, autocast_for, budget, compile_stages, freeze_bn_params, train_mode, train_step,
                   train_steps)
from .optim import build_optimizer
from .provenance import provenance


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixcliError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise MixcliError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


def _plugin(kind: str, spec: dict, *args):
    cls = REGISTRY.get(kind, spec["name"])
    opts = {k: v for k, v in spec.items() if k not in ("name", "off_after_epoch", "label_noise")}
    try:
        return cls(*args, **opts)
    except PluginError as exc:
        raise MixcliError(f"{kind[:-1]} '{spec['name']}': {exc}") from None


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def start(job, store: Store, device: torch.device, progress: Progress | None = None,
          prior_attempts: int | None = None, notes: list | None = None,
          where: dict | None = None) -> tuple[RunState, Recipe, Callbacks]:
    """Build ``job`` (data, model, method, loss, optimizer), restore it from its checkpoint (an interrupted run
    continues where it stopped) and make its listeners (called only through the returned
    :class:`Callbacks`); what :func:`run_job` and a batched member (:mod:`.batched`) start from."""
    run, recipe = build(job, store, device)
    ckpt = resume(run, prior_attempts)
    run.notes = notes
    run.base_row.update(where or {})
    callbacks = Callbacks([
        recipe.evaluations,  # evaluator plugins: add their metrics to an evaluated epoch's row
        StoreWrites(lambda: callbacks.state_dict()),
        Keeper(store, job.run_id, job.config.get("checkpoint", {}).get("keep", "last"), job.config["task"]),
        StepLog(store, job.run_id, job.config["train"].get("log_steps"), run.ctx.step),
        *([ProgressEvents(progress)] if progress is not None else []),
        Loggers(),
    ])
    if ckpt is not None:
        callbacks.load_state_dict(ckpt.get("callbacks", {}))
    return run, recipe, callbacks


def run_job(job, store: Store, device: torch.device, progress: Progress | None = None,
            prior_attempts: int | None = None, notes: list | None = None, where: dict | None = None) -> dict:
    """Train ``job`` (a :class:`mixcli.config.jobs.Job`) to completion (resuming from its checkpoint), record
    it, and return its runs row.

    The caller holds the run's claim (:mod:`mixcli.execution`). ``prior_attempts``: the training starts
    recorded in the run's row (None when it has none: the checkpoint's count is used); this start is
    recorded as one more (``attempts``). A checkpoint of the last epoch rebuilds the result files without
    training (and without counting a start). A loss that is not finite raises :class:`RunFailed`.
    ``notes`` receives one line per logger that failed (None: they go to stderr). ``where``: runs-row columns
    saying where it trains (SLURM job, node, Ray ids: the executor's)."""
    run, recipe, callbacks = start(job, store, device, progress, prior_attempts, notes, where)  # build, restore
    try:
        callbacks.on_start(run)
        for epoch in range(run.start_epoch, run.epochs + 1):  # loop
            t0 = time.perf_counter()
            row = train_epoch(run, recipe, epoch, callbacks)
            if epoch % job.config["eval"]["every"] == 0 or epoch == run.epochs:
                row.update(evaluate_all(run, recipe))
                callbacks.on_evaluate(run, row)
            run.wall += time.perf_counter() - t0
            row["time_s"] = time.perf_counter() - t0
            run.rows.append(row)
            callbacks.on_epoch_end(run, row)
        result = final_row(run)                 # record
        callbacks.on_end(run, result)
    except BaseException as exc:
        callbacks.on_exception(run, exc)
        raise
    return store.run_row(job.run_id) or result


@dataclass
class Recipe:
    """How the loop trains and evaluates, besides the run's state (:func:`build` makes it)."""

    loss_fn: Any
    autocast: Any
    freeze_bn: bool
    off_after: int | None          # method.off_after_epoch: plain training after this epoch
    budget: Budget
    evaluations: Evaluations


def build(job, store: Store, device: torch.device) -> tuple[RunState, "Recipe"]:
    """Data, model, method, loss, optimizer and schedule of ``job``, seeded as every run is: the global
    seed set before the data is loaded and again before the model is built; the method's draws from
    ``numpy.random.default_rng(seed)``."""
    cfg = job.config
    task, train_cfg, seed = cfg["task"], cfg["train"], cfg["seed"]
    _seed_all(seed)
    data = _load_data(cfg)
    dd = DeviceData(data, device, seed)
    _seed_all(seed)
    model = _plugin("models", cfg["model"], data.input_shape, data.out_dim).to(device)
    if device.type == "cuda":  # channels_last weights and inputs (DeviceData), cuDNN picks the fastest kernels
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    load_init(model, cfg)
    freeze_bn = train_cfg.get("freeze_bn", False)
    if freeze_bn:
        freeze_bn_params(model)
    method = _plugin("methods", cfg["method"])
    loss_fn = _plugin("losses", cfg["loss"])
    steps = budget(train_cfg, dd.steps_per_epoch(train_cfg["batch_size"]))
    opt, sched = build_optimizer(model, train_cfg, steps.per_epoch, steps.total)
    bf16 = train_cfg["precision"] == "bf16" or (train_cfg["precision"] == "auto" and device.type == "cuda")
    autocast = autocast_for(device, bf16)
    evaluations = Evaluations(cfg, dd, autocast, store.job_dir(job.run_id), steps.epochs)
    ctx = Context(task=task, num_classes=data.num_classes, device=device, rng=np.random.default_rng(seed),
                  train=dd.train, fetch=dd.fetch, epochs=steps.epochs, data=data, model=model,
                  eval_batches=dd.eval_batches, artifacts_dir=store.job_dir(job.run_id))
    ctx.extra["optimizer"] = opt  # a method that trains its own copy of a head follows the run's lr (automix)
    run = RunState(job, store, device, dd, model, method, ctx, opt, sched, steps.epochs, steps.per_epoch,
                   started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return run, Recipe(loss_fn, autocast, freeze_bn, cfg["method"].get("off_after_epoch"), steps, evaluations)


def resume(run: RunState, prior_attempts: int | None) -> dict | None:
    """Restore ``run`` from its checkpoint when it has one (returned), set up the method, count this start,
    and fill the runs-row columns every status shares (identity, provenance)."""
    job, cfg = run.job, run.job.config
    ckpt = run.store.load_checkpoint(job.run_id)
    if ckpt is not None:
        restore(run, ckpt)
    before = int(prior_attempts if prior_attempts is not None else (ckpt or {}).get("attempts", 0))
    # all epochs done: only the result files are rebuilt, nothing trains (no new start)
    run.attempt = before if ckpt is not None and run.start_epoch > run.epochs else before + 1
    run.method.setup(run.ctx)
    restore_method(run, ckpt)
    if cfg["train"]["compile"]:
        compile_stages(run.model)
    run.base_row = {**identity_row(job, run.device), "started_at": run.started_at, "attempts": run.attempt,
                    "host": socket.gethostname(), "pid": os.getpid(),
                    "threads": torch.get_num_threads(), **provenance(cfg, job.source, run.device)}  # git state, versions, GPU
    return ckpt


def train_epoch(run: RunState, recipe: Recipe, epoch: int, callbacks: Callbacks) -> dict:
    """One epoch of optimizer steps; its row of the epochs table (``epoch``, ``train_loss``, ``lr``)."""
    ctx, model, opt = run.ctx, run.model, run.opt
    run.epoch = ctx.epoch = epoch
    mixing = recipe.off_after is None or epoch <= recipe.off_after
    if mixing:
        run.method.start_epoch(epoch, ctx)
    train_mode(model, recipe.freeze_bn)
    n = recipe.budget.steps(epoch)
    loss_sum = torch.zeros((), device=run.device)
    for batch in train_steps(run.data, run.job.config["train"]["batch_size"], n):
        loss = train_step(model, run.method if mixing else None, recipe.loss_fn, batch, ctx, opt, recipe.autocast)
        run.sched.step()
        loss_sum += loss
        ctx.step += 1
        callbacks.on_step(run, loss)
    train_loss = float(loss_sum) / n  # the one host sync of the epoch
    if not math.isfinite(train_loss):
        raise RunFailed(f"the training loss became {train_loss} in epoch {epoch}; lower "
                        "train.optimizer.lr or check the data")
    return {"epoch": epoch, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"]}


def evaluate_all(run: RunState, recipe: Recipe) -> dict:
    """``{<split>_<metric>: value}`` of every split the data has (:func:`mixcli.training.evaluate.evaluate`)."""
    cfg, row = run.job.config, {}
    for split in SPLITS:
        if split in run.data.splits:
            m = evaluate(run.model, run.data, split, cfg["task"], cfg["eval"]["batch_size"], recipe.autocast)
            row.update({f"{split}_{k}": v for k, v in m.items()})
    return row


def _load_data(cfg: dict) -> DataBundle:
    name = cfg["dataset"]["name"]
    try:
        data: DataBundle = _plugin("datasets", cfg["dataset"]).load()
    except PluginError as exc:
        raise MixcliError(f"dataset '{name}': {exc}") from None
    if data.task != cfg["task"]:
        raise MixcliError(f"dataset '{name}' is a {data.task} dataset but the experiment has task: {cfg['task']}")
    check_bundle(data, name)  # labels in range, sizes agree (one line)
    return _label_noise(data, cfg["dataset"])


def _label_noise(data: DataBundle, dataset: dict) -> DataBundle:
    """The dataset option ``label_noise`` (issue 25): the training labels corrupted, the clean ones kept as
    ``data.train.y_clean`` (:mod:`mixcli.data.noise`); nothing changes without it."""
    if dataset.get("label_noise") is None:
        return data
    from ..data.noise import apply_label_noise
    try:
        return apply_label_noise(data, dataset["label_noise"])
    except PluginError as exc:
        raise MixcliError(f"dataset '{dataset['name']}': label_noise: {exc}") from None


def final_row(run: RunState) -> dict:
    """The runs row of a finished run: its final and best epochs' metrics (``final_*``, ``best_*``)."""
    table = pd.DataFrame(evaluated(run.rows, run.job.config["task"]))
    final = table.iloc[-1].to_dict()
    bi, best_on = best_index(table, run.job.config["task"])
    best = table.iloc[bi].to_dict() if bi is not None else {}
    result = {**run.base_row, "status": "finished", "epochs": len(run.rows), "best_epoch": best.get("epoch"),
              "best_on": best_on, "wall_time_s": run.wall,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name, src in (("final", final), ("best", best)):
        for k, v in src.items():
            if k.startswith(SPLITS) and not isinstance(v, (list, np.ndarray)):
                result[f"{name}_{k}"] = v
    return result


def identity_row(job: Job, device: torch.device) -> dict:
    """The columns of a runs row that describe the job itself (whatever its status)."""
    cfg = job.config
    return {"run_id": job.run_id, "experiment": cfg["name"], "method": cfg["method"]["name"],
            "dataset": cfg["dataset"]["name"], "model": cfg["model"]["name"], "loss": cfg["loss"]["name"],
            "task": cfg["task"], "seed": cfg["seed"], "config": json.dumps(cfg, sort_keys=True),
            "device": str(device), "mixcli_version": __version__, "selection": cfg["eval"]["selection"]}
