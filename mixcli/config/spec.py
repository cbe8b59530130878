"""Experiment file -> validated spec.

An experiment file is YAML (loaded with the safe loader). Every key is checked; an error names the file, the
line and the dotted key, says what is expected, and suggests the closest known key for a typo. ``--set``
overrides (``train.epochs=5``) are applied to the document before validation.

The keys, their types, ranges and defaults are listed in :mod:`mixcli.config.schema`.

Relative paths, one rule: a path written in the experiment file (``out``, ``init_from``, and the path
options of a dataset such as ``dataset.path`` or ``dataset.root``, grid values included) is relative to
the folder of the experiment file; a path given on the command line (``--out``, ``--set``) is relative to
the working folder. ``~`` is expanded. The default output folder results/<name> is in the working folder.

The file itself is read by :mod:`mixcli.config.yamlsafe`: a regular file of at most 1 MB, no repeated keys, and at
most 100,000 values once aliases are expanded (alias bombs are refused before anything is built).
Errors inside a grid value name the grid entry (``grid.method[1] (line 12)``), and errors in a value set by
``--set`` name the override. A ``--set`` of a key that the grid sets in every job is refused (it would
have no effect), and a plugin the grid replaces is still checked.

Validation goes as far as a run's start without loading data: each plugin is built with its options; when
the dataset declares its shape (``Dataset.shape``), the model is built on PyTorch's meta device and the
method checks that it fits (``Method.check_model``), so ``validate`` accepts exactly what ``run`` starts.
A dataset's ``fingerprint()`` (e.g. a CSV file's hash) is part of the run id (``data_fingerprint`` in the
resolved config): a run is redone when its data changed.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import MixcliError, did_you_mean
from ..metrics import metric_clashes
from ..registry import REGISTRY, SINGULAR, plugin_options
from ..registry import option_type_name as _type_name
from ..registry import option_type_ok as _type_ok
from . import batch_seeds, init_from, yamlsafe
from .loggers import parse_log
from .schema import (COMMON_DATASET_OPTIONS, COMMON_METHOD_OPTIONS, DEFAULT_LOSS, MAX_EPOCHS, MAX_JOBS, MAX_MODEL_SIZE, MAX_SEED,
                     PLUGIN_KINDS, SCHEMA, SHORTHAND, TASKS, Check)


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
        elif isinstance(node, yaml.SequenceNode) and (prefix.startswith("grid") or prefix == "eval.extra"):
            for i, v in enumerate(node.value):  # grid values: grid.KEY[i] (also grid[j].KEY[i] for a list);
                self.lines[f"{prefix}[{i}]"] = v.start_mark.line + 1  # evaluators: eval.extra[i]
                self.record(v, f"{prefix}[{i}]")

    def at(self, key: str) -> str:
        """``FILE:LINE: key`` where ``key`` (or the closest enclosing key) was written; a key set by
        ``--set`` or by a grid point names that origin instead."""
        probe = key
        while probe:
            if probe in self.origin:
                return self._origin(probe, key)
            probe = probe.rpartition(".")[0]
        below = [k for k in self.origin if k.startswith(key + ".")]  # e.g. --set model.widths, error at model
        if below:
            return self._origin(below[0], key)
        probe = key
        while probe:
            if probe in self.lines:
                return f"{self.path}:{self.lines[probe]}: {key}"
            probe = probe.rpartition(".")[0]
        return f"{self.path}: {key}"


    def _origin(self, written: str, key: str) -> str:
        """A --set names the override alone (not the file); a grid entry names the file and the entry."""
        origin = self.origin[written]
        if origin.startswith("--set"):
            return origin if written == key else f"{origin}: {key}"
        return f"{self.path}: {origin}: {key}"


def read_yaml(path: str | Path) -> tuple[dict, Lines]:
    """The experiment file as a dict, and where each key was written (bounded: see mixcli.config.yamlsafe)."""
    p = Path(path)
    text = yamlsafe.read_text(p)
    node = yamlsafe.compose(text, str(p))
    doc = yamlsafe.construct(node, str(p))
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
        value = yamlsafe.load(raw, f"--set {key}") if raw.strip() else ""
    except yamlsafe.YAMLSyntaxError:
        value = raw
    return key, value


def set_dotted(doc: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; a plugin written as a bare name becomes ``{name: ...}`` first.

    ``grid.KEY`` addresses the grid entry ``KEY`` whole, dots included (``--set grid.dataset.fraction=[0.1]``
    sets the grid's ``dataset.fraction`` list, adding the axis when the grid has none); ``grid`` replaces the
    grid. A grid written as a list of mappings is replaced whole (``--set grid=[...]``)."""
    if key.startswith("grid.") and len(key) > 5:
        grid = doc.get("grid")
        if isinstance(grid, list):
            raise MixcliError(f"--set {key}: the grid is a list of mappings, so no single entry '{key[5:]}' "
                              "can be addressed; replace the whole grid with --set 'grid=[{...}, ...]'")
        doc["grid"] = {**(grid if isinstance(grid, dict) else {}), key[5:]: value}
        return
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
    log: dict = field(default_factory=dict)  # loggers {name: uri or None} (mixcli.config.loggers)


class Validator:
    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.errors: list[str] = []
        self.instances: dict[str, Any] = {}  # kind -> the plugin object built to check its options

    def error(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.lines.at(key)}: {msg}")

    def check(self, key: str, check: Check, value: Any) -> Any:
        if not check.ok(value):
            self.error(key, f"expected {check.describe()}, got {_short_repr(value)}")
        return value

    def section(self, prefix: str, schema: dict, value: Any) -> dict:
        if value is None:
            value = {}
        if prefix in SHORTHAND and isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            self.error(prefix, f"expected a mapping with keys {', '.join(schema)}, got {_short_repr(value)}")
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
            self.error(key, f"expected a {SINGULAR[kind]} name or a mapping with 'name:' and options, got {_short_repr(value)}")
            return None
        try:
            cls = REGISTRY.get(kind, value["name"])
        except MixcliError as exc:
            self.error(f"{key}.name" if f"{key}.name" in self.lines.lines else key, str(exc))
            return None
        opts = plugin_options(kind, cls)
        common = {"methods": COMMON_METHOD_OPTIONS, "datasets": COMMON_DATASET_OPTIONS}.get(kind, {})
        resolved = {"name": value["name"]}
        for k, v in value.items():
            if k == "name":
                continue
            if k not in opts and k not in common:
                self.error(f"{key}.{k}", f"unknown option '{k}' for {SINGULAR[kind]} '{value['name']}'"
                           f"{did_you_mean(k, list(opts) + list(common))}")
                continue
            default = opts.get(k, common.get(k))
            if not _type_ok(default, v):
                self.error(f"{key}.{k}", f"expected {_type_name(default)}, got {_short_repr(v)}")
            elif isinstance(v, float) and not math.isfinite(v):
                self.error(f"{key}.{k}", f"expected a finite number, got {v!r}")
        missing = [k for k, d in opts.items() if k not in value and d is _empty()]
        if missing:
            self.error(key, f"{SINGULAR[kind]} '{value['name']}' needs the option(s) "
                            f"{', '.join(repr(k) for k in missing)}")
        for k, d in opts.items():
            if k in value:
                resolved[k] = value[k]
                if k in getattr(cls, "path_options", ()) and isinstance(value[k], str) and value[k].strip():
                    written = self.lines.origin.get(f"{key}.{k}", "") or self.lines.origin.get(key, "")
                    resolved[k] = os.path.abspath(resolve_path(value[k], self.lines.path, written.startswith("--set")))
            elif d is not _empty():
                resolved[k] = _plain(copy.deepcopy(d))
        if kind == "methods":
            t = value.get("off_after_epoch")
            if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
                self.error(f"{key}.off_after_epoch", f"expected an integer >= 0 or null, got {t!r}")
            resolved["off_after_epoch"] = t
        if kind == "datasets" and value.get("label_noise") is not None:
            self.label_noise(key, cls, value, resolved)
        supported = getattr(cls, "tasks", None) or (getattr(cls, "task", None),)
        if kind in ("methods", "losses", "datasets", "evaluators") and task not in supported:
            self.error(key, f"{SINGULAR[kind]} '{value['name']}' supports task {', '.join(map(str, supported))}, "
                       f"not {task}")
        if not self.errors:
            try:  # let the plugin check its own values now, so a bad value fails before any run starts
                if kind != "models":
                    self.instances[kind] = cls(**{k: v for k, v in resolved.items()
                                                  if k != "name" and k not in common})
                elif hasattr(cls, "check_options"):  # models are built at run time (they need the data)
                    cls.check_options(**{k: v for k, v in resolved.items() if k != "name"})
            except Exception as exc:  # noqa: BLE001 - report any plugin complaint as a user error
                self.error(key, f"{SINGULAR[kind]} '{value['name']}': {exc}")
        return resolved

    def label_noise(self, key: str, cls: type, value: dict, resolved: dict) -> None:
        """The common dataset option ``label_noise`` (:mod:`mixcli.data.noise`), completed with its defaults
        in ``resolved`` (so it is part of the run id); an error for a regression dataset or a bad value."""
        from ..data.noise import check_label_noise
        try:
            resolved["label_noise"] = check_label_noise(value["label_noise"], value["name"],
                                                        getattr(cls, "task", "classification"))
        except Exception as exc:  # noqa: BLE001 - a PluginError saying what is expected
            self.error(f"{key}.label_noise", str(exc))

    def model_fit(self, dataset: dict, model: dict, method: dict) -> str | None:
        """Build the model on the meta device when the dataset knows its shape: bad model options, and method
        options that do not fit the model, become errors now. Returns the dataset's fingerprint."""
        data = self.instances.get("datasets")
        if data is None or model is None or self.errors:
            return None
        try:
            shape = data.shape()
            fingerprint = data.fingerprint()
        except Exception as exc:  # noqa: BLE001 - a plugin's complaint about its own options
            self.error("dataset", f"dataset '{dataset['name']}': {exc}")
            return None
        method_obj = self.instances.get("methods")
        if shape is not None and method_obj is not None and hasattr(method_obj, "check_input"):
            try:  # the method's declared needs (Method.needs / check_input): images, their size (issue 19)
                method_obj.check_input(tuple(shape[0]))
            except Exception as exc:  # noqa: BLE001 - a plugin's complaint about the data's shape
                self.error("method", f"method '{method['name']}': {exc}")
                return fingerprint
        if shape is not None and dataset.get("label_noise") is not None:
            from ..data.noise import check_classes
            try:  # asymmetric pairs defined for 10 / 100 classes
                check_classes(dataset["label_noise"], int(shape[1]))
            except Exception as exc:  # noqa: BLE001 - a PluginError saying what is expected
                self.error("dataset.label_noise", str(exc))
        if shape is not None:
            problem = _model_problem(model, method, tuple(shape[0]), int(shape[1]),
                                     self.instances.get("methods"))
            if problem:
                self.error(*problem)
        return fingerprint

    def raise_if_errors(self) -> None:
        if self.errors:
            raise MixcliError("\n".join(self.errors))


def _empty():
    import inspect
    return inspect.Parameter.empty


_MODEL_CHECKS: dict[str, tuple[str, str] | None] = {}


MODEL_HOOKS = frozenset({"class_activation", "class_attention", "patch_tokens", "patch_attention"})


def _model_problem(model: dict, method: dict, in_shape: tuple, out_dim: int, method_obj) -> tuple | None:
    """(key, message) when ``model`` cannot be built for this data shape, or ``method`` does not fit it."""
    import torch

    from ..api import PluginError

    memo = json.dumps([model, method, in_shape, out_dim], sort_keys=True, default=str)
    if memo in _MODEL_CHECKS:
        return _MODEL_CHECKS[memo]
    cls = REGISTRY.get("models", model["name"])
    problem = None
    try:
        with torch.device("meta"):
            built = cls(in_shape, out_dim, **{k: v for k, v in model.items() if k != "name"})
    except (PluginError, ValueError, TypeError) as exc:
        problem = ("model", f"model '{model['name']}': {exc}")
    except Exception:  # noqa: BLE001 - cannot be built without real tensors; checked when the run starts
        built = None
    else:
        n = sum(p.numel() for p in built.parameters()) + sum(b.numel() for b in built.buffers())
        if n > MAX_MODEL_SIZE:
            problem = ("model", f"model '{model['name']}' would have {n:,} weights (more than {MAX_MODEL_SIZE:,}); "
                                "check its width options")
        elif method_obj is not None:
            try:
                method_obj.check_model(built, in_shape)
                for hook in sorted(method_obj.requires() & MODEL_HOOKS):
                    # a model without the hook refuses at once (Model's default); one that has it may not run
                    # on meta tensors (then it is checked when the run starts)
                    getattr(built, hook)(torch.empty((2, *in_shape), device="meta"))
            except PluginError as exc:
                problem = ("method", f"method '{method['name']}' with model '{model['name']}': {exc}")
            except Exception:  # noqa: BLE001 - not checkable on the meta device; setup checks it at run time
                pass
    _MODEL_CHECKS[memo] = problem
    return problem


def _plain(v: Any) -> Any:
    """Tuples (plugin defaults) as lists, so configs serialize to YAML and JSON alike."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read, override and check an experiment file (structure, grid and seeds; plugins are checked per job)."""
    doc, lines = read_yaml(path)
    set_keys = []
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(doc, key, value)
        lines.origin[key] = f"--set {key}"
        set_keys.append(key)
    v = Validator(lines)
    for k in doc:
        if k not in SCHEMA:
            v.error(str(k), f"unknown key '{k}'{did_you_mean(k, SCHEMA)}")
    check_name(doc.get("name"), v.error)
    for req in ("dataset", "model"):
        if req not in doc:
            v.error(req, f"missing required key '{req}'")
    if doc.get("out") is not None:
        check_path_text("out", doc["out"], v.error)
    seeds = _seeds(doc.get("seeds", [0]), v.error)
    grid = doc.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    if "grid" in doc and not all(isinstance(g, dict) for g in grids):
        v.error("grid", f"expected a mapping of dotted keys to lists of values (or a list of such mappings), "
                        f"got {doc['grid']!r}")
        grid, grids = {}, []
    elif "grid" in doc and not all(grids):
        v.error("grid", "the grid is empty; remove it or give at least one key with a list of values")
    for k, values in [kv for g in grids for kv in g.items()]:
        head = str(k).split(".")[0]
        if not isinstance(k, str) or not k or "" in k.split("."):
            v.error("grid", f"grid keys must be dotted key names such as train.epochs, got {k!r}")
        elif not isinstance(values, list) or not values:
            v.error(f"grid.{k}", f"expected a non-empty list of values, got {_short_repr(values)}")
        elif head not in SCHEMA or head in ("name", "grid", "seeds", "out", "log"):
            v.error(f"grid.{k}", f"cannot vary '{k}' in a grid{did_you_mean(head, SCHEMA) if head not in SCHEMA else ''}")
    v.raise_if_errors()
    grid_keys = [k for g in grids for k in g]
    points = sum(math.prod(len(vals) for vals in g.values()) for g in grids) if grid_keys else 1
    if points * len(seeds) > MAX_JOBS:
        v.error("grid" if points > 1 else "seeds",
                f"{points} grid point(s) x {len(seeds)} seed(s) = {points * len(seeds)} jobs; one file may "
                f"describe at most {MAX_JOBS}")
    _check_shadowed(doc, grid_keys, set_keys, v)
    v.raise_if_errors()
    out = resolve_path(doc["out"], path, "out" in set_keys) if doc.get("out") else Path("results") / doc["name"]
    base = {k: val for k, val in doc.items() if k not in ("grid", "seeds", "out", "log")}
    for k in grid_keys:
        lines.origin.setdefault(k, lines.origin.get(f"grid.{k}") or f"grid.{k}" + (
            f" (line {lines.lines[f'grid.{k}']})" if f"grid.{k}" in lines.lines else ""))

    log = parse_log(doc.get("log"), lines.at("log"))
    return Experiment(str(path), doc["name"], out, base, grid, seeds, lines, log)


def check_name(name: Any, error) -> None:
    """An experiment name names a folder under results/: no path separators, '..', or control characters."""
    if not isinstance(name, str) or not name.strip():
        error("name", f"expected a non-empty string naming the experiment, got {name!r}")
    elif "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        error("name", f"expected a plain name (no '/', '\\', control characters, and not '.' or '..'): it "
                      f"names the folder results/<name>, got {name!r}")
    elif len(name) > 200:
        error("name", f"expected a name of at most 200 characters, got {len(name)}")


def check_path_text(key: str, value: Any, error) -> None:
    """A path written as a non-empty string without control characters (NUL included)."""
    if not isinstance(value, str) or not value.strip():
        error(key, f"expected a path (a non-empty string), got {_short_repr(value)}")
    elif any(ord(c) < 32 for c in value):
        error(key, f"expected a path without control characters, got {_short_repr(value)}")


def resolve_path(value: str, experiment: str | Path, from_command_line: bool) -> Path:
    """THE rule for relative paths: one written in an experiment file (its ``out``, ``init_from``, a
    dataset's path options, grid values included) is relative to the file's folder; one given on the command
    line (``--out``, ``--set``) is relative to the working folder. ``~`` is expanded."""
    p = Path(os.path.expanduser(value))
    if p.is_absolute() or from_command_line:
        return p
    return Path(os.path.normpath(Path(experiment).parent / p))


def _seeds(seeds: Any, error) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool) and 0 < seeds <= MAX_JOBS:
        return list(range(seeds))
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > MAX_JOBS:
        error("seeds", f"expected at most {MAX_JOBS} seeds (one file may describe at most {MAX_JOBS} jobs), "
                       f"got {seeds}")
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in seeds)):
        error("seeds", f"expected a non-empty list of integers or a count > 0, got {_short_repr(seeds)}")
    elif not all(0 <= s <= MAX_SEED for s in seeds):
        bad = next(s for s in seeds if not 0 <= s <= MAX_SEED)
        error("seeds", f"expected seeds in [0, {MAX_SEED}], got {bad}")
    elif len(set(seeds)) != len(seeds):
        error("seeds", f"seeds are repeated: {_short_repr(seeds)}")
    else:
        return list(seeds)
    return [0]


def _short_repr(v: Any, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _check_shadowed(doc: dict, grid_keys: list[str], set_keys: list[str], v: "Validator") -> None:
    """A ``--set`` that the grid overrides has no effect: an error. A plugin the grid replaces is still
    checked (a typo in it would otherwise pass unnoticed)."""
    for key in set_keys:
        for g in grid_keys:
            if key == g or key.startswith(g + "."):
                v.error(key, f"has no effect: grid.{g} sets '{g}' in every job; change the grid instead "
                             f"(e.g. --set grid.{g}=[...])")
    task = doc.get("task", "classification")
    for g in dict.fromkeys(grid_keys):
        overridden = any(k == g or k.startswith(g + ".") for k in set_keys)
        if g in PLUGIN_KINDS and g in doc and not overridden and task in TASKS:
            v.plugin(g, PLUGIN_KINDS[g], doc[g], task)


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
    check_extra(v, cfg["eval"], task, cfg)
    extra = cfg["eval"].get("extra")
    for i, spec in enumerate(extra if isinstance(extra, list) else []):  # e.g. label_noise's memorisation
        cls = REGISTRY.get("evaluators", spec["name"])
        raw = doc.get("dataset")
        if getattr(cls, "needs_clean_labels", False) and not (isinstance(raw, dict) and raw.get("label_noise")):
            v.error(f"eval.extra[{i}]", f"evaluator '{spec['name']}' compares the noisy training labels with the "
                                        "clean ones; give the dataset a label_noise option, e.g. label_noise: "
                                        "{kind: symmetric, rate: 0.4}")
    cfg["checkpoint"] = v.section("checkpoint", SCHEMA["checkpoint"], doc.get("checkpoint"))
    cfg["init_from"] = init_from.check_init_from(doc.get("init_from"), v.error)
    init_from.check_train(doc.get("train"), cfg["train"], v.error)
    if cfg["eval"].get("selection") is None:
        cfg["eval"]["selection"] = "best" if task == "regression" else "final"
    sched = cfg["train"].get("schedule", {})
    ms = sched.get("milestones") or []
    epochs = cfg["train"].get("epochs")
    if not isinstance(ms, list):
        pass  # reported by the section check
    elif not all(isinstance(m, int) and not isinstance(m, bool) and 0 < m <= MAX_EPOCHS for m in ms):
        v.error("train.schedule.milestones", f"expected a list of positive epoch numbers, got {_short_repr(ms)}")
    elif isinstance(epochs, int) and epochs >= 1 and isinstance(sched.get("warmup_epochs"), int) \
            and sched["warmup_epochs"] >= epochs:
        v.error("train.schedule.warmup_epochs",
                f"expected fewer warm-up epochs than train.epochs ({epochs}), got {sched['warmup_epochs']}")
    off = (cfg["method"] or {}).get("off_after_epoch")
    n_epochs = init_from.epoch_count(cfg["train"])
    if isinstance(off, int) and isinstance(n_epochs, int) and off >= n_epochs:
        v.error("method.off_after_epoch", f"mixing would never be switched off: off_after_epoch ({off}) must be "
                                          f"below the number of epochs ({n_epochs}); lower it or remove it")
    if cfg["train"].get("batch_seeds") is True:  # (auto falls back to unbatched runs where batching cannot)
        for key, why in batch_seeds.refusals(cfg):
            v.error("train.batch_seeds", f"{why} (at {key}); set train.batch_seeds false or auto")
    fingerprint = v.model_fit(cfg["dataset"], cfg["model"], cfg["method"])
    v.raise_if_errors()
    if fingerprint is not None:
        cfg["data_fingerprint"] = str(fingerprint)
    return cfg


def check_extra(v: Validator, ev: dict, task: str, cfg: dict | None = None) -> None:
    """Validate ``eval.extra`` (evaluator plugins and their options, each named once) and ``eval.extra_every``."""

    items = ev.get("extra")
    if not isinstance(items, list):
        return  # already reported by the type check
    resolved, seen = [], set()
    for i, item in enumerate(items):
        key = f"eval.extra[{i}]"
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
        ev_obj = v.instances.pop("evaluators", None)
        if ev_obj is not None and hasattr(ev_obj, "check_config"):
            try:  # what the evaluator needs of the data and the method, judged without loading the data
                ev_obj.check_config(cfg or {}, v.instances.get("datasets"))
            except Exception as exc:  # noqa: BLE001 - a plugin's complaint is a user error
                v.error(key, f"evaluator '{spec['name']}': {exc}")
        resolved.append(spec)
    ev["extra"] = resolved
    every, base = ev.get("extra_every"), ev.get("every")
    if isinstance(every, int) and isinstance(base, int) and every >= 1 and base >= 1 and every % base:
        v.error("eval.extra_every", f"expected a multiple of eval.every ({base}): evaluators run after a regular "
                                    f"evaluation, got {every}")


def run_id(cfg: dict) -> str:
    """A stable id: the method name, the seed and a hash of the fully resolved configuration."""
    import hashlib

    blob = json.dumps(init_from.hashed_config(cfg), sort_keys=True, default=str, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{cfg['method']['name']}-s{cfg['seed']}-{digest}"
