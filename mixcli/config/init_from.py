"""The ``init_from`` key and the iteration options: validation, parent-run lookup, the run-id rule.

``init_from`` (a top-level experiment key) starts every job from the weights of an earlier run::

    init_from: RUN                 # a run id under this experiment's output dir (OUT/jobs/RUN/checkpoint.pt),
                                   # or a run directory (holding checkpoint.pt and config.yaml),
                                   # or a checkpoint file (with the run's config.yaml beside it);
                                   # a relative path is relative to this experiment file's folder
    init_from:                     # or: the matching job of another experiment file
      experiment: pretrain.yaml    #   path relative to this experiment file
      where: {method: mixup}       #   dotted keys of that experiment's resolved config the job must match
                                   #   (a plugin given by name matches its name; a mapping matches a subset)
      seed: null                   #   the parent's seed; null = this job's seed

The parent's model (name and options) and dataset name must equal this experiment's; the weights of its
last checkpoint (the final epoch of a finished run) are loaded before training; the optimizer, schedule and
method start fresh. With the ``experiment`` form, ``mixcli run`` first runs (or skips, when finished) the
parent jobs, into the parent experiment's own output directory. The resolved config records the parent's
run id (``init_from.parent``, the name of its run directory) and the run id hashes only that of
``init_from``: fine-tunes of different parents get different run ids, and the same parent referred to by id,
path or experiment gives the same one. The checkpoint path (``init_from.checkpoint``) is recorded too.

Training options (``train:``) used for fine-tuning (applied by :mod:`mixcli.training.loop` and
:mod:`mixcli.training.optim`):

- ``optimizer.classifier_lr`` (null = ``lr``): learning rate of ``model.classifier``; ``lr`` is then the
  backbone's (SelMix: backbone lr/10, classifier lr).
- ``freeze_bn`` (false): BatchNorm layers stay in eval mode during training (running statistics frozen) and
  their affine parameters are not trained.
- ``iterations`` (null): train for exactly this many optimizer steps instead of ``epochs`` passes. An
  "epoch" is then ``iterations_per_epoch`` steps (null = one pass over the training set), the last one
  possibly shorter; evaluation (``eval.every``), checkpoints, curves, ``warmup_epochs`` and
  ``milestones`` count these epochs. Each epoch draws fresh shuffled passes over the training set.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import MixcliError, did_you_mean

INIT_KEYS = ("experiment", "where", "seed")
_EXPANDING: list[str] = []  # experiment files being expanded (cycle guard)


# ------------------------------------------------------------------------------------------- validation
def check_init_from(value: Any, error) -> dict | None:
    """Validate the ``init_from`` key as written; ``error(key, msg)`` records a problem. Returns the
    normalized form: None, ``{"run": str}`` or ``{"experiment": str, "where": dict, "seed": int|None}``."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return {"run": value}
    if not isinstance(value, dict):
        error("init_from", f"expected a run id, a run directory or checkpoint path, or a mapping with "
                           f"experiment/where/seed, got {value!r}")
        return None
    unknown = [k for k in value if k not in INIT_KEYS]
    for k in unknown:
        error(f"init_from.{k}", f"unknown key '{k}'{did_you_mean(k, INIT_KEYS)}")
    exp, where, seed = value.get("experiment"), value.get("where") or {}, value.get("seed")
    if unknown and exp is None:
        pass  # most likely the misspelled 'experiment' itself: one message is enough
    elif not isinstance(exp, str) or not exp:
        error("init_from.experiment", f"expected the path of the parent experiment file, got {exp!r}")
    if not isinstance(where, dict):
        error("init_from.where", f"expected a mapping of dotted config keys to values, got {where!r}")
        where = {}
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        error("init_from.seed", f"expected an integer or null (= this job's seed), got {seed!r}")
    return {"experiment": exp, "where": where, "seed": seed}


def check_train(doc_train: Any, train: dict, error) -> None:
    """Cross-checks of the iteration options (``train`` is the validated section, ``doc_train`` as written)."""
    written = doc_train if isinstance(doc_train, dict) else {}
    if train.get("iterations") is None:
        if train.get("iterations_per_epoch") is not None:
            error("train.iterations_per_epoch", "only meaningful with train.iterations; set that, or remove this")
        return
    if "epochs" in written:
        error("train.iterations", "give either train.epochs or train.iterations, not both")
    train["epochs"] = None  # counted in iterations
    ipe, warm = train.get("iterations_per_epoch"), train.get("schedule", {}).get("warmup_epochs")
    if isinstance(ipe, int) and isinstance(warm, int) and isinstance(train["iterations"], int):
        n = math.ceil(train["iterations"] / ipe)
        if warm >= n:
            error("train.schedule.warmup_epochs",
                  f"expected fewer warm-up epochs than the {n} epochs of {ipe} iterations, got {warm}")


def epoch_count(train: dict) -> int | None:
    """The number of epochs of a validated ``train`` section (None when it depends on the data size)."""
    if train.get("iterations") is None:
        return train.get("epochs")
    ipe = train.get("iterations_per_epoch")
    return math.ceil(train["iterations"] / ipe) if isinstance(ipe, int) and ipe > 0 else None


def hashed_config(cfg: dict) -> dict:
    """The part of a resolved config that identifies a run: of ``init_from`` only the parent's run id (not
    how it was referred to, nor where its checkpoint lies); not what the run keeps (``checkpoint``,
    ``train.log_steps``: see :mod:`mixcli.training.checkpoints`) nor how it is trained (``train.batch_seeds``),
    which change nothing it computes; ``eval.extra``/``extra_every`` only when evaluators are listed (so runs
    without them keep the ids they had before evaluators existed)."""
    cfg = {k: v for k, v in cfg.items() if k != "checkpoint"}
    if isinstance(cfg.get("train"), dict) and {"log_steps", "batch_seeds"} & set(cfg["train"]):
        cfg["train"] = {k: v for k, v in cfg["train"].items() if k not in ("log_steps", "batch_seeds")}
    ev = cfg.get("eval")
    if isinstance(ev, dict) and not ev.get("extra") and ("extra" in ev or "extra_every" in ev):
        cfg = {**cfg, "eval": {k: v for k, v in ev.items() if k not in ("extra", "extra_every")}}
    init = cfg.get("init_from")
    if not init or "parent" not in init:
        return cfg
    return {**cfg, "init_from": {"parent": init["parent"]}}


# -------------------------------------------------------------------------------------- the parent run
def _describe(plugin: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in plugin.items() if k != "name")
    return f"'{plugin.get('name')}'" + (f" ({opts})" if opts else "")


def _matches(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _matches(have[k], v) for k, v in want.items())
    if isinstance(have, dict) and isinstance(want, str):
        return have.get("name") == want
    return have == want


def _get(cfg: dict, dotted: str) -> Any:
    cur: Any = cfg
    for part in str(dotted).split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


def locate_run(ref: str, out: Path) -> tuple[str, Path, dict]:
    """(run id, checkpoint path, resolved config) of a run given by id (under ``out``) or by path."""
    p = Path(ref).expanduser()
    if p.is_file():
        ckpt, run_dir = p, p.parent
    elif p.is_dir():
        run_dir, ckpt = p, p / "checkpoint.pt"
    elif (Path(out) / "jobs" / ref).is_dir():
        run_dir = Path(out) / "jobs" / ref
        ckpt = run_dir / "checkpoint.pt"
    else:
        raise MixcliError(f"init_from: '{ref}' is neither a run id under {Path(out) / 'jobs'} nor an existing "
                          "run directory or checkpoint file")
    if not ckpt.is_file():
        raise MixcliError(f"init_from: run directory {run_dir} has no checkpoint.pt (has the run started?)")
    import zipfile

    if not zipfile.is_zipfile(ckpt):  # what torch.save writes; checked now so validate refuses it as run does
        raise MixcliError(f"init_from: {ckpt} is not a PyTorch checkpoint (torch.save writes a zip archive)")
    refused = weights_only_problem(ckpt)
    if refused:  # loaded now as the run loads it (weights_only), so that validate refuses it as run does
        raise MixcliError(f"init_from: {refused}")
    conf = run_dir / "config.yaml"
    if not conf.is_file():
        raise MixcliError(f"init_from: {conf} is missing; the model and dataset of {ckpt} cannot be checked "
                          "(a mixcli run directory holds config.yaml beside checkpoint.pt)")
    parent_cfg = read_run_config(conf, "init_from")
    if not isinstance(parent_cfg.get("model"), dict):
        raise MixcliError(f"init_from: {conf} is not a mixcli run configuration")
    return run_dir.name, ckpt, parent_cfg


def weights_only_problem(path: Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` (how a run loads its parent's weights) refuses ``path``, in
    one line, or None. A pickle holding Python objects (a ``__reduce__`` payload) is refused by the
    weights-only unpickler before anything in it runs."""
    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: the tensors are not read
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, one line
        from ..api import checkpoint_refusal

        return checkpoint_refusal(path, exc, "use a checkpoint.pt mixcli wrote, or save the weights alone with "
                                             "torch.save(model.state_dict(), PATH)")
    return None


def read_run_config(path: Path, who: str) -> dict:
    """A run directory's config.yaml as a dict; anything else is a one-line error naming ``path``."""
    from . import yamlsafe

    try:
        cfg = yamlsafe.load(yamlsafe.read_text(Path(path), "run configuration"), str(path))
    except MixcliError as exc:
        raise MixcliError(f"{who}: {exc} (a mixcli run directory holds the config.yaml mixcli wrote)") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("method"), dict):
        raise MixcliError(f"{who}: {path} is not a mixcli run configuration (expected the mapping mixcli "
                          "writes, with method, model and dataset)")
    return cfg


def check_compatible(cfg: dict, parent_cfg: dict, parent_id: str, where: str) -> None:
    pm, cm = parent_cfg.get("model") or {}, cfg["model"]
    if pm != cm:
        raise MixcliError(f"{where}: the parent run {parent_id} trained model {_describe(pm)} but this "
                          f"experiment uses model {_describe(cm)}; init_from needs the same model name and options")
    pd_, cd = (parent_cfg.get("dataset") or {}).get("name"), cfg["dataset"]["name"]
    if pd_ != cd:
        raise MixcliError(f"{where}: the parent run {parent_id} was trained on dataset '{pd_}' but this "
                          f"experiment uses dataset '{cd}'; init_from needs the same dataset")


def resolve_init(cfg: dict, exp, cache: dict, expand_file):
    """Fill ``cfg["init_from"]`` with the parent's run id and checkpoint; return the parent Job (experiment
    form) or None. ``cache`` holds the parent experiments' jobs between calls of one expansion;
    ``expand_file(path)`` gives the jobs of a parent experiment file (:func:`mixcli.config.jobs.expand`)."""

    init = cfg.get("init_from")
    if not init:
        return None
    where = exp.lines.at("init_from")
    parent = None
    if "run" in init:
        ref = init["run"]
        if not exp.lines.origin.get("init_from", "").startswith("--set"):  # the one rule for relative paths
            near = Path(exp.path).parent / os.path.expanduser(ref)
            ref = str(near) if near.exists() or os.sep in ref or "/" in ref else ref  # else: a run id
        try:
            pid, ckpt, parent_cfg = locate_run(ref, exp.out)
        except MixcliError as exc:  # name the file and line of the init_from key
            raise MixcliError(f"{where}: {str(exc).removeprefix('init_from: ')}") from None
    else:
        path = (Path(exp.path).parent / init["experiment"]).resolve()
        if path not in cache:
            if str(path) in _EXPANDING:
                raise MixcliError(f"{where}: experiment files refer to each other in a cycle: "
                                  f"{' -> '.join(_EXPANDING + [str(path)])}")
            if not path.is_file():
                raise MixcliError(f"{where}: no such experiment file {path}")
            _EXPANDING.append(str(path))
            try:
                cache[path] = expand_file(path)
            finally:
                _EXPANDING.pop()
        seed = cfg["seed"] if init.get("seed") is None else init["seed"]
        found = [j for j in cache[path] if j.config["seed"] == seed and
                 all(_matches(_get(j.config, k), v) for k, v in init["where"].items())]
        if len(found) != 1:
            labels = sorted({j.label for j in cache[path]})
            raise MixcliError(f"{where}: {len(found)} jobs of {path.name} match where={init['where']} and "
                              f"seed={seed}; expected exactly one (its jobs: {'; '.join(labels)})")
        parent = found[0]
        pid, parent_cfg = parent.run_id, parent.config
        ckpt = parent.out / "jobs" / pid / "checkpoint.pt"
    check_compatible(cfg, parent_cfg, pid, where)
    cfg["init_from"] = {**init, "parent": pid, "checkpoint": str(ckpt)}
    return parent


def with_parents(jobs: list) -> list:
    """The jobs preceded by the parent jobs they fine-tune from (each once, parents first)."""
    order, seen = [], set()

    def add(job):
        if getattr(job, "parent", None) is not None:
            add(job.parent)
        key = (str(job.out), job.run_id)
        if key not in seen:
            seen.add(key)
            order.append(job)

    for j in jobs:
        add(j)
    return order


__all__ = ["check_init_from", "check_train", "epoch_count", "hashed_config", "resolve_init", "with_parents",
           "locate_run", "read_run_config", "check_compatible", "weights_only_problem"]
