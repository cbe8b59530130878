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
