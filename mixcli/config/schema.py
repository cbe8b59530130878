"""The experiment file's keys: their types, ranges and defaults (the key reference).

Top-level keys (defaults in brackets)::


    name: str                          experiment name (required)
    task: classification|regression    [classification]
    dataset: NAME or {name: NAME, <option>: value, ...}      (required; options from `mixcli list datasets`)
                                       classification datasets also take label_noise: {kind:
                                       symmetric|asymmetric|instance, rate: [0,1], seed: [0], ...}
                                       (mixcli.data.noise), the training labels' synthetic noise
    model:   NAME or {name: NAME, ...}                        (required)
    method:  NAME or {name: NAME, off_after_epoch: T, ...}    [erm]; off_after_epoch switches mixing off
                                                              after epoch T (plain training from T+1 on)
    loss:    NAME or {name: NAME, ...}    [soft_ce for classification, mse for regression]
    train:
      epochs: int > 0                  [10]
      batch_size: int > 0              [128]
      optimizer: {name: sgd|adamw|adam, lr: >0 [0.1], momentum: [0,1) [0.9], weight_decay: >=0 [5e-4],
                  nesterov: bool [false], classifier_lr: >0 or null [null = lr] (lr is then the backbone's)}
      schedule: {name: constant|cosine|multistep [cosine], warmup_epochs: >=0 [0],
                 milestones: [epochs] [[]], gamma: (0,1] [0.1]}
      compile: bool [false]            torch.compile each model stage (CPU or CUDA)
      precision: auto|bf16|fp32        [auto]: bf16 autocast on CUDA, fp32 on CPU
      iterations: int > 0 or null      [null] train this many steps instead of `epochs` (not both); an
      iterations_per_epoch: int > 0    "epoch" is then this many steps [null = one pass] (mixcli.config.init_from)
      freeze_bn: bool [false]          BatchNorm kept in eval mode, its affine parameters not trained
      log_steps: int > 0 or null       [null] record loss and lr every N steps (jobs/<run_id>/steps.parquet)
      batch_seeds: true|false|auto     [false] train the seeds of one configuration together as one batched
                                       model (mixcli.training.batched; not in the run id); auto batches
                                       where the benchmark shows it pays (mixcli.config.batch_seeds)
    eval:
      every: int > 0                   [1] evaluate every N epochs (and always after the last)
      batch_size: int > 0              [1024]
      selection: final|best|median_last10   the epoch rule reports use by default [final for
                                       classification, best (best validation epoch) for regression]
      extra: [NAME or {name: NAME, <option>: value}, ...]   [[]] evaluator plugins (`mixcli list
                                       evaluators`: fgsm, pgd, corruptions, ood, calibration), each at most
                                       once; run after the final epoch's evaluation (mixcli.training.evaluate)
      extra_every: int > 0 or null     [null] also run them every N epochs (a multiple of eval.every)
    checkpoint:
      keep: last|best|both             [last] the last epoch's state, the best epoch's weights, or both
                                       (mixcli.training.checkpoints; log_steps and keep are not in the run id)
    seeds: [int, ...] or a count N     [[0]] (a count means seeds 0..N-1)
    grid: {dotted.key: [v1, v2, ...]}  ablation: the cartesian product of all values (any key, e.g. method);
                                       a list of such mappings runs the union of their products
    out: path                          [results/<name>] output directory
    init_from: RUN | {experiment: FILE, where: {...}, seed: N}   [null] start from an earlier run's
                                       weights (same model and dataset; see mixcli.config.init_from)
    log: NAME | [NAME, ...] | {NAME: URI}   [none] loggers (mlflow, tensorboard; mixcli.loggers); not
                                       part of a run's configuration or run id

``name`` names the folder results/<name>: it may not contain '/', '\\' or control characters, nor be '.'
or '..'. ``train.epochs`` (and every epoch count) is at most 1,000,000; seeds lie in [0, 2**32 - 1]; one
file describes at most 10,000 jobs (grid points x seeds). ``method.off_after_epoch`` must be below the
number of epochs (else mixing would never stop).

``log`` is parsed by :mod:`mixcli.config.loggers`, ``init_from`` and the iteration options by
:mod:`mixcli.config.init_from`; everything else is checked against :data:`SCHEMA` by :mod:`mixcli.config.spec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RULES = ("final", "best", "median_last10")  # eval.selection (mixcli.results.selection applies them)
TASKS = ("classification", "regression")
DEFAULT_LOSS = {"classification": "soft_ce", "regression": "mse"}
COMMON_METHOD_OPTIONS = {"off_after_epoch": None}
#: options every classification dataset takes besides its own (mixcli.data.noise: the training labels'
#: synthetic noise, e.g. {kind: symmetric, rate: 0.4, seed: 0}); in the run id only when given
COMMON_DATASET_OPTIONS = {"label_noise": None}

_REQUIRED = object()


@dataclass
class Check:
    """A typed value with a range: ``kind`` in int|float|bool|str|list|seeds."""

    kind: str
    default: Any = _REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    nullable: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list": "a list"}[self.kind]
        if self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            what += f" in {lo}{self.low}, {self.high}{hi}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low}"
        if self.kind == "float":
            what = what.replace("a number", "a finite number", 1)
        return what + (" or null" if self.nullable else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            return False
        if self.kind == "float" and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            return False
        if self.kind == "str" and not isinstance(v, str):
            return False
        if self.kind == "list" and not isinstance(v, list):
            return False
        if self.kind == "choice" and not any(v is c or (type(v) is type(c) and v == c) for c in self.choices):
            return False  # (True == 1: a choice of booleans and strings is matched by type too)
        if self.choices and v not in self.choices:
            return False
        if self.kind == "float" and not math.isfinite(v):
            return False
        if self.kind in ("int", "float"):
            if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
                return False
            if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
                return False
        return True


MAX_EPOCHS = 1_000_000   # train.epochs (and every epoch count) above this is a typo, not an experiment
MAX_JOBS = 10_000        # seeds x grid points of one file
MAX_SEED = 2**32 - 1     # numpy's seed range
MAX_MODEL_SIZE = 2_000_000_000  # weights of a model built at validation time (8 GB in float32)
POS_INT = Check("int", low=1)
SCHEMA: dict[str, Any] = {
    "name": Check("str"),
    "task": Check("str", "classification", choices=TASKS),
    "dataset": "plugin:datasets",
    "model": "plugin:models",
    "method": "plugin:methods",
    "loss": "plugin:losses",
    "train": {
        "epochs": Check("int", 10, low=1, high=MAX_EPOCHS),
        "batch_size": Check("int", 128, low=1, high=2**24),
        "optimizer": {
            "name": Check("str", "sgd", choices=("sgd", "adamw", "adam")),
            "lr": Check("float", 0.1, low=0, low_open=True),
            "momentum": Check("float", 0.9, low=0, high=1, high_open=True),
            "weight_decay": Check("float", 5e-4, low=0),
            "nesterov": Check("bool", False),
            "classifier_lr": Check("float", None, low=0, low_open=True, nullable=True),
        },
        "schedule": {
            "name": Check("str", "cosine", choices=("constant", "cosine", "multistep")),
            "warmup_epochs": Check("int", 0, low=0, high=MAX_EPOCHS),
            "milestones": Check("list", []),
            "gamma": Check("float", 0.1, low=0, high=1, low_open=True),
        },
        "compile": Check("bool", False),
        "precision": Check("str", "auto", choices=("auto", "bf16", "fp32")),
        "iterations": Check("int", None, low=1, high=10**9, nullable=True),
        "iterations_per_epoch": Check("int", None, low=1, high=10**9, nullable=True),
        "freeze_bn": Check("bool", False),
        "log_steps": Check("int", None, low=1, nullable=True),
        "batch_seeds": Check("choice", False, choices=(False, True, "auto")),
    },
    "eval": {
        "every": Check("int", 1, low=1, high=MAX_EPOCHS),
        "batch_size": Check("int", 1024, low=1, high=2**24),
        "selection": Check("str", None, choices=RULES, nullable=True),
        "extra": Check("list", []),
        "extra_every": Check("int", None, low=1, nullable=True),
    },
    "checkpoint": {"keep": Check("str", "last", choices=("last", "best", "both"))},
    "seeds": Check("seeds", [0]),
    "grid": Check("grid", {}),
    "out": Check("str", None, nullable=True),
    "init_from": Check("init", None, nullable=True),  # checked by mixcli.config.init_from.check_init_from
    "log": Check("log", None, nullable=True),  # checked by mixcli.config.loggers.parse_log; not in the run config
}
SHORTHAND = {"train.optimizer", "train.schedule"}  # may be written as just their name
PLUGIN_KINDS = {"dataset": "datasets", "model": "models", "method": "methods", "loss": "losses"}
