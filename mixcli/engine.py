"""Jobs -> engine -> results: train and evaluate one resolved job, checkpointing every epoch.

The engine knows no method, dataset or model by name: it builds them from the registry and talks to them
through :mod:`mixcli.api`. The hot loop does no host-device synchronization (losses are summed on the
device and read once per epoch); batches come from :class:`mixcli.data.DeviceData`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from . import __version__, finetune, loggers
from .api import Context, DataBundle, MixOutput, PluginError
from .checkpoints import Keeper, StepLog
from .data import DeviceData, check_bundle
from .errors import MixcliError, RunFailed
from .evaluate import Evaluations
from .jobs import Job
from .metrics import classification_metrics, regression_metrics
from .provenance import provenance
from .registry import REGISTRY
from .selection import PRIMARY, best_index
from .store import SPLITS, Store


class Progress(Protocol):
    def start(self, job: Job, epochs: int, steps: int, start_epoch: int) -> None: ...
    def step(self) -> None: ...
    def epoch(self, epoch: int, row: dict) -> None: ...


class _Quiet:
    def start(self, *a) -> None: ...
    def step(self) -> None: ...
    def epoch(self, *a) -> None: ...


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
    opts = {k: v for k, v in spec.items() if k not in ("name", "off_after_epoch")}
    try:
        return cls(*args, **opts)
    except PluginError as exc:
        raise MixcliError(f"{kind[:-1]} '{spec['name']}': {exc}") from None


def build_optimizer(model: torch.nn.Module, train: dict, steps_per_epoch: int, total: int | None = None):
    """Optimizer and per-step LR schedule; ``total`` steps (default epochs x steps_per_epoch)."""
    o, s = train["optimizer"], train["schedule"]
    params = finetune.param_groups(model, o)
    if o["name"] == "sgd":
        opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                              nesterov=o["nesterov"] and o["momentum"] > 0)
    elif o["name"] == "adamw":
        opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    total = total or train["epochs"] * steps_per_epoch
    warm = s["warmup_epochs"] * steps_per_epoch
    milestones = [m * steps_per_epoch for m in s["milestones"]]

    def factor(step: int) -> float:
        """LR multiplier after ``step`` optimizer steps: linear warm-up, then the schedule."""
        if step < warm:
            return (step + 1) / warm
        if s["name"] == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if s["name"] == "multistep":
            return s["gamma"] ** sum(step >= m for m in milestones)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model, dd: DeviceData, split: str, task: str, batch_size: int, autocast) -> dict:
    """Metrics of ``model`` on one split (see :mod:`mixcli.metrics`)."""
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


def autocast_for(device: torch.device, bf16: bool):
    """A factory of autocast contexts: bf16 when asked for, else a no-op."""
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def train_step(model, method, loss_fn, batch, ctx: Context, opt, autocast) -> torch.Tensor:
    """One optimizer step: the method's forward (plain training when ``method`` is None), its loss (or the
    loss the method set itself), backward, update. Returns the detached float32 loss (no host sync). The
    benchmarks time exactly this function."""
    with autocast():
        out = method(model, batch, ctx) if method is not None else MixOutput.unmixed(model(batch.x), batch.y)
        loss = out.loss if out.loss is not None else loss_fn(out, ctx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().float()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def run_job(job: Job, store: Store, device: torch.device, progress: Progress | None = None,
            prior_attempts: int | None = None) -> dict:
    """Train ``job`` to completion (resuming from its checkpoint), record it, and return its runs row.

    The caller holds the run's claim (:mod:`mixcli.execution`). ``prior_attempts``: the training starts
    recorded in the run's row (None when it has none: the checkpoint's count is used); this start is
    recorded as one more (``attempts``). A checkpoint of the last epoch rebuilds the result files without
    training (and without counting a start). A loss that is not finite raises :class:`RunFailed`."""
    progress = progress or _Quiet()
    cfg = job.config
    task, train_cfg, seed = cfg["task"], cfg["train"], cfg["seed"]
    _seed_all(seed)
    try:
        data: DataBundle = _plugin("datasets", cfg["dataset"]).load()
    except PluginError as exc:
        raise MixcliError(f"dataset '{cfg['dataset']['name']}': {exc}") from None
    if data.task != task:
        raise MixcliError(f"dataset '{cfg['dataset']['name']}' is a {data.task} dataset but the experiment "
                          f"has task: {task}")
    check_bundle(data, cfg["dataset"]["name"])  # issue 12: labels in range, sizes agree (one line)
    dd = DeviceData(data, device, seed)
    _seed_all(seed)
    model = _plugin("models", cfg["model"], data.input_shape, data.out_dim).to(device)
    if device.type == "cuda":  # channels_last weights and inputs (DeviceData), cuDNN picks the fastest kernels
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    finetune.load_init(model, cfg)
    freeze_bn = train_cfg.get("freeze_bn", False)
    if freeze_bn:
        finetune.freeze_bn_params(model)
    method = _plugin("methods", cfg["method"])
    loss_fn = _plugin("losses", cfg["loss"])
    off_after = cfg["method"].get("off_after_epoch")
    budget = finetune.budget(train_cfg, dd.steps_per_epoch(train_cfg["batch_size"]))
    steps, n_epochs = budget.per_epoch, budget.epochs
    opt, sched = build_optimizer(model, train_cfg, steps, budget.total)
    bf16 = train_cfg["precision"] == "bf16" or (train_cfg["precision"] == "auto" and device.type == "cuda")
    autocast = autocast_for(device, bf16)
    extra = Evaluations(cfg, dd, autocast, store.job_dir(job.run_id), n_epochs)  # evaluator plugins (#14)

    ctx = Context(task=task, num_classes=data.num_classes, device=device, rng=np.random.default_rng(seed),
                  train=dd.train, fetch=dd.fetch, epochs=n_epochs, data=data, model=model,
                  eval_batches=dd.eval_batches, artifacts_dir=store.job_dir(job.run_id))
    ctx.extra["optimizer"] = opt  # a method that trains its own copy of a head follows the run's lr (automix)
    rows: list[dict] = []
    start, wall = 1, 0.0
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ckpt = store.load_checkpoint(job.run_id)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        dd.generator.set_state(ckpt["data_rng"].to(dd.generator.get_state().device))
        ctx.rng.bit_generator.state = json.loads(ckpt["method_rng"])
        rows = json.loads(ckpt["rows"])
        start, wall, started_at = ckpt["epoch"] + 1, ckpt["wall"], ckpt["started_at"]
        ctx.step = ckpt["step"]
    before = int(prior_attempts if prior_attempts is not None else (ckpt or {}).get("attempts", 0))
    # all epochs done: only the result files are rebuilt, nothing trains (no new start)
    attempt = before if ckpt is not None and start > n_epochs else before + 1
    method.setup(ctx)
    if ckpt is not None and hasattr(method, "load_state_dict") and "method" in ckpt:
        method.load_state_dict(ckpt["method"])
    if train_cfg["compile"]:
        compile_stages(model)
    base_row = {**identity_row(job, device), "started_at": started_at, "attempts": attempt,
                "host": socket.gethostname(), "pid": os.getpid()}
    base_row.update(provenance(cfg, job.source, device))  # git state, versions, GPU (mixcli.provenance)
    store.write_config(job.run_id, cfg)
    store.write_run({**base_row, "status": "running", "epochs": len(rows)})
    log = loggers.for_job(job, {**base_row, "status": "running"})  # log: / --log (mixcli.loggers)
    progress.start(job, n_epochs, steps, start)
    every = cfg["eval"]["every"]
    keeper = Keeper(store, job.run_id, cfg.get("checkpoint", {}).get("keep", "last"), task)  # mixcli.checkpoints
    steplog = StepLog(store, job.run_id, train_cfg.get("log_steps"), ctx.step)
    with _loggers_told_on_error(log, base_row, rows, store.job_dir(job.run_id)):
        for epoch in range(start, n_epochs + 1):
            t0 = time.perf_counter()
            ctx.epoch = epoch
            mixing = off_after is None or epoch <= off_after
            if mixing:
                method.start_epoch(epoch, ctx)
            finetune.train_mode(model, freeze_bn)
            loss_sum = torch.zeros((), device=device)
            for batch in finetune.train_steps(dd, train_cfg["batch_size"], budget.steps(epoch)):
                loss = train_step(model, method if mixing else None, loss_fn, batch, ctx, opt, autocast)
                sched.step()
                loss_sum += loss
                ctx.step += 1
                steplog.step(ctx.step, loss, opt)
                progress.step()
            train_loss = float(loss_sum) / budget.steps(epoch)
            if not math.isfinite(train_loss):
                raise RunFailed(f"the training loss became {train_loss} in epoch {epoch}; lower "
                                "train.optimizer.lr or check the data")
            row = {"epoch": epoch, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"]}
            if epoch % every == 0 or epoch == n_epochs:
                for split in SPLITS:
                    if split in dd.splits:
                        m = evaluate(model, dd, split, task, cfg["eval"]["batch_size"], autocast)
                        row.update({f"{split}_{k}": v for k, v in m.items()})
                row.update(extra.after_eval(model, epoch))
            wall += time.perf_counter() - t0
            row["time_s"] = time.perf_counter() - t0
            rows.append(row)
            store.write_epochs(job.run_id, [r for r in rows if "test_" + PRIMARY[task] in r])
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "data_rng": dd.generator.get_state().cpu(),
                "method_rng": json.dumps(ctx.rng.bit_generator.state), "rows": json.dumps(rows),
                "epoch": epoch, "wall": wall, "started_at": started_at, "step": ctx.step, "attempts": attempt,
            }
            if hasattr(method, "state_dict"):
                state["method"] = method.state_dict()
            store.save_checkpoint(job.run_id, _uncompiled(state))
            keeper.epoch(rows, model)
            log.steps(job.run_id, steplog.flush(epoch))
            progress.epoch(epoch, row)
            log.epoch(job.run_id, row)
    evaluated_rows = [r for r in rows if "test_" + PRIMARY[task] in r]
    store.write_epochs(job.run_id, evaluated_rows)  # (again: rebuilds a damaged file of a finished run)
    evaluated = pd.DataFrame(evaluated_rows)
    final = evaluated.iloc[-1].to_dict()
    bi, best_on = best_index(evaluated, task)
    best = evaluated.iloc[bi].to_dict() if bi is not None else {}
    result = {**base_row, "status": "finished", "epochs": len(rows), "best_epoch": best.get("epoch"),
              "best_on": best_on, "wall_time_s": wall,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name, src in (("final", final), ("best", best)):
        for k, v in src.items():
            if k.startswith(SPLITS) and not isinstance(v, (list, np.ndarray)):
                result[f"{name}_{k}"] = v
    store.write_run(result)
    keeper.finish()
    log.end(store.run_row(job.run_id) or result, store.job_dir(job.run_id))
    return store.run_row(job.run_id) or result


@contextlib.contextmanager
def _loggers_told_on_error(log, base_row: dict, rows: list, job_dir):
    """Training that stops with an exception still ends the loggers' run: ``failed``, or ``interrupted``
    for Ctrl-C / SIGTERM (the exception goes on to the caller, which records the run)."""
    try:
        yield
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            log.end({**base_row, "status": status, "epochs": len(rows)}, job_dir)
        except Exception:  # noqa: BLE001 - a logger must never hide why the run stopped
            pass
        raise


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


def identity_row(job: Job, device: torch.device) -> dict:
    """The columns of a runs row that describe the job itself (whatever its status)."""
    cfg = job.config
    return {"run_id": job.run_id, "experiment": cfg["name"], "method": cfg["method"]["name"],
            "dataset": cfg["dataset"]["name"], "model": cfg["model"]["name"], "loss": cfg["loss"]["name"],
            "task": cfg["task"], "seed": cfg["seed"], "config": json.dumps(cfg, sort_keys=True),
            "device": str(device), "mixcli_version": __version__, "selection": cfg["eval"]["selection"]}
