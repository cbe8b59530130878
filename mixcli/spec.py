"""Experiment file -> validated spec.

An experiment file is YAML (loaded with the safe loader). Every key is checked; an error names the file, the
line and the dotted key, says what is expected, and suggests the closest known key for a typo. ``--set``
overrides (``train.epochs=5``) are applied to the document before validation.

Top-level keys (defaults in brackets)::

    name: str                          experiment name (required)
    task: classification|regression    [classification]
    dataset: NAME or {name: NAME, <option>: value, ...}      (required; options from `mixcli list datasets`)
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
      iterations_per_epoch: int > 0    "epoch" is then this many steps [null = one pass] (mixcli.finetune)
      freeze_bn: bool [false]          BatchNorm kept in eval mode, its affine parameters not trained
    eval:
      every: int > 0                   [1] evaluate every N epochs (and always after the last)
      batch_size: int > 0              [1024]
      selection: final|best|median_last10   the epoch rule reports use by default [final for
                                       classification, best (best validation epoch) for regression]
      extra: [NAME or {name: NAME, <option>: value}, ...]   [[]] evaluator plugins (`mixcli list
                                       evaluators`: fgsm, pgd, corruptions, ood, calibration), each at most
                                       once; run after the final epoch's evaluation (mixcli.evaluate)
      extra_every: int > 0 or null     [null] also run them every N epochs (a multiple of eval.every)
    seeds: [int, ...] or a count N     [[0]] (a count means seeds 0..N-1)
    grid: {dotted.key: [v1, v2, ...]}  ablation: the cartesian product of all values (any key, e.g. method);
                                       a list of such mappings runs the union of their products
    out: path                          [results/<name>] output directory
    init_from: RUN | {experiment: FILE, where: {...}, seed: N}   [null] start from an earlier run's
                                       weights (same model and dataset; see mixcli.finetune)
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import finetune
from .errors import MixcliError, did_you_mean
from .registry import REGISTRY, plugin_options
from .selection import RULES

TASKS = ("classification", "regression")
DEFAULT_LOSS = {"classification": "soft_ce", "regression": "mse"}
COMMON_METHOD_OPTIONS = {"off_after_epoch": None}

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
            return "one of " + ", ".join(map(str, self.choices))
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list": "a list"}[self.kind]
        if self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            what += f" in {lo}{self.low}, {self.high}{hi}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low}"
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
        if self.choices and v not in self.choices:
            return False
        if self.kind in ("int", "float"):
            if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
                return False
            if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
                return False
        return True


POS_INT = Check("int", low=1)
SCHEMA: dict[str, Any] = {
    "name": Check("str"),
    "task": Check("str", "classification", choices=TASKS),
    "dataset": "plugin:datasets",
    "model": "plugin:models",
    "method": "plugin:methods",
    "loss": "plugin:losses",
    "train": {
        "epochs": Check("int", 10, low=1),
        "batch_size": Check("int", 128, low=1),
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
            "warmup_epochs": Check("int", 0, low=0),
            "milestones": Check("list", []),
            "gamma": Check("float", 0.1, low=0, high=1, low_open=True),
        },
        "compile": Check("bool", False),
        "precision": Check("str", "auto", choices=("auto", "bf16", "fp32")),
        "iterations": Check("int", None, low=1, nullable=True),
        "iterations_per_epoch": Check("int", None, low=1, nullable=True),
        "freeze_bn": Check("bool", False),
    },
    "eval": {
        "every": Check("int", 1, low=1),
        "batch_size": Check("int", 1024, low=1),
        "selection": Check("str", None, choices=RULES, nullable=True),
        "extra": Check("list", []),
        "extra_every": Check("int", None, low=1, nullable=True),
    },
    "seeds": Check("seeds", [0]),
    "grid": Check("grid", {}),
    "out": Check("str", None, nullable=True),
    "init_from": Check("init", None, nullable=True),  # checked by mixcli.finetune.check_init_from
}
SHORTHAND = {"train.optimizer", "train.schedule"}  # may be written as just their name


# ------------------------------------------------------------------------------------------- YAML reading
class Lines:
    """Where each dotted key of the document was written (file line numbers, 1-based)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[str, int] = {}
        self.origin: dict[str, str] = {}

    def record(self, node: yaml.Node, prefix: str = "") -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                self.lines[key] = k.start_mark.line + 1
                self.record(v, key)
        elif isinstance(node, yaml.SequenceNode) and prefix:  # list items as prefix.0, prefix.1, ...
            for i, item in enumerate(node.value):
                self.lines[f"{prefix}.{i}"] = item.start_mark.line + 1
                self.record(item, f"{prefix}.{i}")

    def at(self, key: str) -> str:
        if key in self.origin:
            return f"{self.path}: {self.origin[key]}: {key}"
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}: {key}"
            probe = probe.rpartition(".")[0]
        return f"{self.path}: {key}"


def read_yaml(path: str | Path) -> tuple[dict, Lines]:
    p = Path(path)
    if not p.exists():
        raise MixcliError(f"{p}: no such experiment file")
    if p.is_dir():
        raise MixcliError(f"{p}: is a directory, expected a YAML experiment file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MixcliError(f"{p}: cannot read the file ({exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise MixcliError(f"{p}{line}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise MixcliError(f"{p}: YAML syntax error: {exc}") from None
    if doc is None:
        raise MixcliError(f"{p}: the file is empty; an experiment needs at least name, dataset and model")
    if not isinstance(doc, dict):
        raise MixcliError(f"{p}:1: expected a mapping of keys (name, dataset, model, ...), "
                          f"got a {type(doc).__name__}")
    lines = Lines(str(p))
    lines.record(node)
    return doc, lines


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise MixcliError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise MixcliError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(doc: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; a plugin written as a bare name becomes ``{name: ...}`` first."""
    parts = key.split(".")
    cur = doc
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if isinstance(nxt, str) and (part in ("dataset", "model", "method", "loss") or
                                     ".".join(parts[: i + 1]) in SHORTHAND):
            nxt = {"name": nxt}
        elif not isinstance(nxt, dict):
            nxt = {}
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


# ---------------------------------------------------------------------------------------------- validate
@dataclass
class Experiment:
    """A validated experiment: the base document, the ablation grid and the seeds."""

    path: str
    name: str
    out: Path
    doc: dict
    grid: dict[str, list] | list[dict[str, list]]
    seeds: list[int]
    lines: Lines = field(repr=False)


class Validator:
    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.errors: list[str] = []

    def error(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.lines.at(key)}: {msg}")

    def check(self, key: str, check: Check, value: Any) -> Any:
        if not check.ok(value):
            self.error(key, f"expected {check.describe()}, got {value!r}")
        return value

    def section(self, prefix: str, schema: dict, value: Any) -> dict:
        if value is None:
            value = {}
        if prefix in SHORTHAND and isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            self.error(prefix, f"expected a mapping with keys {', '.join(schema)}, got {value!r}")
            return {}
        out = {}
        for k in value:
            if k not in schema:
                self.error(f"{prefix}.{k}", f"unknown key '{k}'{did_you_mean(k, schema)}")
        for k, sub in schema.items():
            key = f"{prefix}.{k}"
            if isinstance(sub, dict):
                out[k] = self.section(key, sub, value.get(k))
            elif k in value:
                out[k] = self.check(key, sub, value[k])
            else:
                out[k] = copy.deepcopy(sub.default)
        return out

    def plugin(self, key: str, kind: str, value: Any, task: str) -> dict | None:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            self.error(key, f"expected a {kind[:-1]} name or a mapping with 'name:' and options, got {value!r}")
            return None
        try:
            cls = REGISTRY.get(kind, value["name"])
        except MixcliError as exc:
            self.error(f"{key}.name" if f"{key}.name" in self.lines.lines else key, str(exc))
            return None
        opts = plugin_options(kind, cls)
        common = COMMON_METHOD_OPTIONS if kind == "methods" else {}
        resolved = {"name": value["name"]}
        for k, v in value.items():
            if k == "name":
                continue
            if k not in opts and k not in common:
                self.error(f"{key}.{k}", f"unknown option '{k}' for {kind[:-1]} '{value['name']}'"
                           f"{did_you_mean(k, list(opts) + list(common))}")
                continue
            default = opts.get(k, common.get(k))
            if not _type_ok(default, v):
                self.error(f"{key}.{k}", f"expected {_type_name(default)}, got {v!r}")
        for k, d in opts.items():
            if k in value:
                resolved[k] = value[k]
            elif d is _empty():
                self.error(key, f"{kind[:-1]} '{value['name']}' needs the option '{k}'")
            else:
                resolved[k] = _plain(copy.deepcopy(d))
        if kind == "methods":
            t = value.get("off_after_epoch")
            if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
                self.error(f"{key}.off_after_epoch", f"expected an integer >= 0 or null, got {t!r}")
            resolved["off_after_epoch"] = t
        supported = getattr(cls, "tasks", None) or (getattr(cls, "task", None),)
        if kind in ("methods", "losses", "datasets", "evaluators") and task not in supported:
            self.error(key, f"{kind[:-1]} '{value['name']}' supports task {', '.join(map(str, supported))}, "
                       f"not {task}")
        if not self.errors:
            try:  # let the plugin check its own values now, so a bad value fails before any run starts
                if kind != "models":
                    cls(**{k: v for k, v in resolved.items() if k != "name" and k not in common})
            except Exception as exc:  # noqa: BLE001 - report any plugin complaint as a user error
                self.error(key, f"{kind[:-1]} '{value['name']}': {exc}")
        return resolved

    def raise_if_errors(self) -> None:
        if self.errors:
            raise MixcliError("\n".join(self.errors))


def _empty():
    import inspect
    return inspect.Parameter.empty


def _type_ok(default: Any, v: Any) -> bool:
    if default is None or default is _empty():
        return True
    if isinstance(default, bool):
        return isinstance(v, bool)
    if isinstance(default, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, str):
        return isinstance(v, str)
    if isinstance(default, (list, tuple)):
        return isinstance(v, (list, tuple))
    if isinstance(default, dict):
        return isinstance(v, dict)
    return True


def _plain(v: Any) -> Any:
    """Tuples (plugin defaults) as lists, so configs serialize to YAML and JSON alike."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _type_name(default: Any) -> str:
    for t, name in ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
                    ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(default, t):
            return name
    return "a value"


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read, override and check an experiment file (structure, grid and seeds; plugins are checked per job)."""
    doc, lines = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(doc, key, value)
        lines.origin[key] = f"--set {key}"
    v = Validator(lines)
    for k in doc:
        if k not in SCHEMA:
            v.error(str(k), f"unknown key '{k}'{did_you_mean(k, SCHEMA)}")
    if not isinstance(doc.get("name"), str) or not doc.get("name"):
        v.error("name", "expected a non-empty string naming the experiment")
    for req in ("dataset", "model"):
        if req not in doc:
            v.error(req, f"missing required key '{req}'")
    seeds = doc.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
        seeds = list(range(seeds))
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in seeds)):
        v.error("seeds", f"expected a non-empty list of integers or a count > 0, got {seeds!r}")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        v.error("seeds", f"seeds are repeated: {seeds}")
    grid = doc.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    if "grid" in doc and not all(isinstance(g, dict) for g in grids):
        v.error("grid", f"expected a mapping of dotted keys to lists of values (or a list of such mappings), "
                        f"got {doc['grid']!r}")
        grid, grids = {}, []
    elif "grid" in doc and not all(grids):
        v.error("grid", "the grid is empty; remove it or give at least one key with a list of values")
    for k, values in [kv for g in grids for kv in g.items()]:
        if not isinstance(values, list) or not values:
            v.error(f"grid.{k}", f"expected a non-empty list of values, got {values!r}")
        elif str(k).split(".")[0] not in SCHEMA or str(k).split(".")[0] in ("name", "grid", "seeds", "out"):
            head = str(k).split(".")[0]
            v.error(f"grid.{k}", f"cannot vary '{k}' in a grid{did_you_mean(head, SCHEMA) if head not in SCHEMA else ''}")
    v.raise_if_errors()
    out = Path(doc.get("out") or Path("results") / doc["name"])
    base = {k: val for k, val in doc.items() if k not in ("grid", "seeds", "out")}
    for k in [k for g in grids for k in g]:
        lines.origin.setdefault(k, f"grid.{k}" + (f" (line {lines.lines[f'grid.{k}']})"
                                                  if f"grid.{k}" in lines.lines else ""))
    return Experiment(str(path), doc["name"], out, base, grid, seeds, lines)


def resolve(doc: dict, lines: Lines) -> dict:
    """Validate one concrete configuration (no grid) and fill every default, plugin options included."""
    v = Validator(lines)
    task = doc.get("task", "classification")
    v.check("task", SCHEMA["task"], task)
    if task not in TASKS:
        v.raise_if_errors()
    cfg: dict[str, Any] = {"name": doc["name"], "task": task}
    cfg["dataset"] = v.plugin("dataset", "datasets", doc.get("dataset"), task)
    cfg["model"] = v.plugin("model", "models", doc.get("model"), task)
    cfg["method"] = v.plugin("method", "methods", doc.get("method", "erm"), task)
    cfg["loss"] = v.plugin("loss", "losses", doc.get("loss", DEFAULT_LOSS[task]), task)
    cfg["train"] = v.section("train", SCHEMA["train"], doc.get("train"))
    cfg["eval"] = v.section("eval", SCHEMA["eval"], doc.get("eval"))
    check_extra(v, cfg["eval"], task)
    cfg["init_from"] = finetune.check_init_from(doc.get("init_from"), v.error)
    finetune.check_train(doc.get("train"), cfg["train"], v.error)
    if cfg["eval"].get("selection") is None:
        cfg["eval"]["selection"] = "best" if task == "regression" else "final"
    sched = cfg["train"].get("schedule", {})
    ms = sched.get("milestones") or []
    epochs = cfg["train"].get("epochs")
    if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ms):
        v.error("train.schedule.milestones", f"expected a list of positive epoch numbers, got {ms!r}")
    elif isinstance(epochs, int) and epochs >= 1 and isinstance(sched.get("warmup_epochs"), int) \
            and sched["warmup_epochs"] >= epochs:
        v.error("train.schedule.warmup_epochs",
                f"expected fewer warm-up epochs than train.epochs ({epochs}), got {sched['warmup_epochs']}")
    v.raise_if_errors()
    return cfg


def check_extra(v: Validator, ev: dict, task: str) -> None:
    """Validate ``eval.extra`` (evaluator plugins and their options, each named once) and ``eval.extra_every``."""
    from .evaluate import metric_clashes

    items = ev.get("extra")
    if not isinstance(items, list):
        return  # already reported by the type check
    resolved, seen = [], set()
    for i, item in enumerate(items):
        key = f"eval.extra.{i}"
        spec = v.plugin(key, "evaluators", item, task)
        if spec is None:
            continue
        if spec["name"] in seen:
            v.error(key, f"evaluator '{spec['name']}' is listed twice; its metrics have fixed names, so list "
                         "it once (vary its options with a grid instead)")
        seen.add(spec["name"])
        why = metric_clashes(spec["name"], REGISTRY.get("evaluators", spec["name"]))
        if why:
            v.error(key, why)
        resolved.append(spec)
    ev["extra"] = resolved
    every, base = ev.get("extra_every"), ev.get("every")
    if isinstance(every, int) and isinstance(base, int) and every >= 1 and base >= 1 and every % base:
        v.error("eval.extra_every", f"expected a multiple of eval.every ({base}): evaluators run after a regular "
                                    f"evaluation, got {every}")


def run_id(cfg: dict) -> str:
    """A stable id: the method name, the seed and a hash of the fully resolved configuration."""
    import hashlib

    blob = json.dumps(finetune.hashed_config(cfg), sort_keys=True, default=str, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{cfg['method']['name']}-s{cfg['seed']}-{digest}"
