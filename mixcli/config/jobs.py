"""Validated spec -> jobs: the ablation grid's cartesian product times the seeds, each fully resolved."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MixcliError
from .init_from import resolve_init
from .spec import Experiment, load_experiment, resolve, run_id, set_dotted


@dataclass
class Job:
    run_id: str
    config: dict          # fully resolved, includes the seed
    grid_values: dict     # the grid keys and the values this job takes
    out: Path
    parent: "Job | None" = None  # the job it fine-tunes from (init_from: {experiment: ...}), run first
    source: str | None = None    # the experiment file (its git state is recorded as provenance)
    log: dict = field(default_factory=dict)  # loggers {name: uri or None} (log: / --log; mixcli.config.loggers)
    title: str = ""       # the job among its sweep's jobs, e.g. ``mixup alpha=0.4 lr=0.1 s1`` (:func:`name_jobs`)

    @property
    def label(self) -> str:
        bits = [f"{k}={short_value(v)}" for k, v in self.grid_values.items()]
        return " ".join(bits + [f"seed={self.config['seed']}"])


def short_value(v) -> str:
    """A grid value as a label shows it: a plugin as ``name(option=value,...)``, anything else as text."""
    if isinstance(v, dict):
        name = v.get("name", "")
        rest = ",".join(f"{k}={x}" for k, x in v.items() if k != "name")
        return f"{name}({rest})" if rest else str(name)
    return str(v)


PLUGINS = ("method", "dataset", "model", "loss")  # their options are compared among runs of the same plugin
#: configuration keys that never tell runs apart in a title (what a run keeps, where it starts from)
UNTITLED = ("name", "seed", "init_from", "checkpoint.keep", "train.log_steps")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def _text(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_text(x) for x in v) + "]"
    return str(v)


def titles(configs: list[dict]) -> list[str]:
    """Short names of runs that tell them apart: the method, then ``key=value`` for each configuration key
    whose value differs between the runs (a plugin's options: between the runs of that plugin; keys by their
    last dotted part, or more where two would read alike), then the seed: ``mixup alpha=0.4 lr=0.1 s1``."""
    flats = [{k: v for k, v in _flat(c).items() if not any(k == u or k.startswith(u + ".") for u in UNTITLED)}
             for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    keys = [k for k in keys if k.startswith("method.")] + [k for k in keys if not k.startswith("method.")]
    shown: dict[str, set | None] = {}  # key -> the plugins among whose runs it differs (None: every run)
    for k in keys:
        if k == "method.name":
            continue
        head = k.split(".")[0]
        if head in PLUGINS and not k.endswith(".name"):  # compared within the runs of one plugin
            groups: dict = {}
            for f in flats:
                if k in f:
                    groups.setdefault(_text(f.get(f"{head}.name")), set()).add(_text(f[k]))
            differs = {p for p, g in groups.items() if len(g) > 1}
            if differs:
                shown[k] = differs
        elif len({_text(f.get(k, "-")) for f in flats}) > 1:
            shown[k] = None
    plain = {k: k[:-5] if k.endswith(".name") else k for k in shown}  # loss.name -> loss
    short = {}
    for k, p in plain.items():  # the last dotted part, more of the key where two shown keys would read alike
        n = 1
        while n < len(p.split(".")) and \
                [".".join(x.split(".")[-n:]) for x in plain.values()].count(".".join(p.split(".")[-n:])) > 1:
            n += 1
        short[k] = ".".join(p.split(".")[-n:])
    out = []
    for f, c in zip(flats, configs):
        method = c.get("method")
        method = method.get("name") if isinstance(method, dict) else method
        bits = [_text(method) if method is not None else "?"]
        bits += [f"{short[k]}={_text(f[k])}" for k, among in shown.items()
                 if k in f and (among is None or _text(f.get(k.split(".")[0] + ".name")) in among)]
        out.append(" ".join(bits + ([f"s{c['seed']}"] if c.get("seed") is not None else [])))
    return out


def name_jobs(jobs: list[Job]) -> list[Job]:
    """Give every job its :attr:`Job.title` among ``jobs`` (a sweep's)."""
    for j, t in zip(jobs, titles([j.config for j in jobs])):
        j.title = t
    return jobs


def expand(exp: Experiment) -> list[Job]:
    """All jobs of an experiment, grid combinations in file order (a list of grids: the union of their
    products), seeds innermost."""
    grids = exp.grid if isinstance(exp.grid, list) else [exp.grid]
    listed = isinstance(exp.grid, list)
    points = [(j, list(g), combo) for j, g in enumerate(grids)
              for combo in itertools.product(*(list(enumerate(v)) for v in g.values()))]
    jobs, seen, errors, parents = [], set(), [], {}
    for j, keys, icombo in points:
        combo = tuple(value for _, value in icombo)
        doc = copy.deepcopy(exp.doc)
        for k, (i, value) in zip(keys, icombo):
            set_dotted(doc, k, copy.deepcopy(value))
            _point_origin(exp, f"grid[{j}].{k}" if listed else f"grid.{k}", k, i)
        try:
            cfg = resolve(doc, exp.lines)
        except MixcliError as exc:
            msg = str(exc)
            if msg not in errors:
                errors.append(msg)
            continue
        for seed in exp.seeds:
            c = copy.deepcopy(cfg)
            c["seed"] = seed
            parent = resolve_init(c, exp, parents, _expand_file)
            rid = run_id(c)
            if rid in seen:  # two grid points that resolve to the same configuration
                continue
            seen.add(rid)
            jobs.append(Job(rid, c, dict(zip(keys, combo)), exp.out, parent, exp.path, dict(exp.log)))
    if errors:
        raise MixcliError("\n".join(errors))
    return jobs


def _expand_file(path: Path) -> list[Job]:
    """The jobs of another experiment file (the parents of an ``init_from: {experiment: ...}``)."""
    return expand(load_experiment(path))


def _point_origin(exp: Experiment, written: str, key: str, i: int) -> None:
    """Errors in a grid value name the grid entry and its line (a ``--set`` of the key keeps its origin)."""
    if exp.lines.origin.get(key, "").startswith("--set"):
        return
    line = exp.lines.lines.get(f"{written}[{i}]") or exp.lines.lines.get(written)
    exp.lines.origin[key] = f"{written}[{i}]" + (f" (line {line})" if line else "")
