"""``mixcli status``: where a sweep stands, read from the store and the claims (never from a process).

Everything it reads may have been crafted by whoever can write into ``OUT``: a runs row whose ``config`` is
not JSON (or nested beyond reason), whose status or numbers have the wrong type, a holder file that is not
JSON or holds absurd values. Each such file is one warning line (``Status.damaged``) and is shown as far as
it can be; text comes without terminal control characters. A running run whose holder's heartbeat is older
than :data:`.claims.STALE_S` is *stalled* (its holder is stopped or hung): it is listed so, and the sweep
then has no ETA (it cannot end while that holder keeps the run).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.jobs import name_jobs, titles
from ..errors import MixcliError
from ..results.store import clean_text, read_table
from .claims import MAX_COUNT, heartbeat_age, holder, stalled_for
from .placement import COLUMNS, short

ORDER = ("finished", "running", "interrupted", "failed", "pending")


@dataclass
class Status:
    counts: dict = field(default_factory=lambda: {s: 0 for s in ORDER})
    running: list = field(default_factory=list)      # dicts: run_id, label, holder, heartbeat_s, stalled_s, epoch, epochs
    failed: list = field(default_factory=list)       # (run_id, error, where: SLURM job / Ray node)
    interrupted: list = field(default_factory=list)  # run_ids
    eta_s: float | None = None
    damaged: list = field(default_factory=list)
    arrays: list = field(default_factory=list)       # (SLURM array id, {state: tasks}) of --executor slurm


def sweep_status(outs: list[Path], expected: dict[str, tuple[Path, str]] | None = None) -> Status:
    """Status of the runs under ``outs``; ``expected`` (run_id -> (out, label)) adds the jobs of an
    experiment that have no record yet as pending and restricts the report to them."""
    st = Status()
    seen = set()
    walls, left = [], 0.0
    rows = []
    for out in outs:
        runs = read_table(out, "runs", warn=st.damaged.append)
        for r in runs.to_dict("records"):
            r, problem = _checked_row(r)
            if problem:
                st.damaged.append(f"{Path(out) / 'runs' / (str(r['run_id']) + '.parquet')}: {problem}; "
                                  "shown as far as it can be")
            if expected is None or r["run_id"] in expected:
                rows.append((out, r))
        if (Path(out) / "slurm").is_dir():
            from .slurm_state import array_states

            st.arrays += array_states(out)
    cfgs = [r.pop("_config") for _, r in rows]
    try:
        names = titles(cfgs)  # the runs' names among these runs: method, the values that vary, seed
    except Exception:  # noqa: BLE001 - configs of crafted rows that parse but are not a run's: plain ids
        names = [str(r["run_id"]) for _, r in rows]
    stalled = 0
    for (out, r), cfg, name in zip(rows, cfgs, names):
        rid = r["run_id"]
        seen.add(rid)
        label = expected[rid][1] if expected is not None else name
        status = r["status"]
        if status == "running":
            h = holder(out, rid, warn=st.damaged.append)
            if h is None:
                status = "interrupted"  # its holder died (SIGKILL, power loss): the next run resumes it
            else:
                epochs = h.get("epochs") or _count((cfg.get("train") or {}).get("epochs")
                                                   if isinstance(cfg.get("train"), dict) else None)
                done = min(h.get("epoch") or 0, epochs or MAX_COUNT)
                stall = stalled_for(h)
                st.running.append({"run_id": rid, "label": label, "holder": _who(h),
                                   "where": short(h), "heartbeat_s": heartbeat_age(h), "stalled_s": stall,
                                   "epoch": done, "epochs": epochs})
                if stall is not None:
                    stalled += 1  # no ETA for it: it ends only when its holder goes on or goes away
                else:
                    left += 1 - (done / epochs if epochs else 0)
        if status == "interrupted":
            st.interrupted.append(rid)
            left += 1
        if status == "failed":
            st.failed.append((rid, r.get("error") or "", short(r)))
        wall = r.get("wall_time_s")
        if status == "finished" and wall is not None:
            walls.append(wall)
        st.counts[status] = st.counts.get(status, 0) + 1
    if expected is not None:
        st.counts["pending"] = len(set(expected) - seen)
        left += st.counts["pending"]
    if stalled:
        st.eta_s = None  # the sweep cannot end while a stalled holder keeps its run
    elif walls and left:
        st.eta_s = sum(walls) / len(walls) * left / max(1, len(st.running))
    elif not left:
        st.eta_s = 0.0
    return st


MAX_CONFIG = 1 << 20  # a config column longer than this is not parsed (crafted)


def _who(info: dict) -> str:
    pid = info.get("pid")
    return f"{info.get('host') or '?'}:{'?' if pid is None else pid}"


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < MAX_COUNT else None


def _checked_row(r: dict) -> tuple[dict, str | None]:
    """A runs row as status uses it (``run_id`` and ``status`` text, ``error`` text, ``wall_time_s`` a
    finite number or None, the parsed ``config`` as ``_config``: a dict), and what was wrong with it."""
    problems = []
    rid = r.get("run_id")
    if not isinstance(rid, str) or not rid:
        problems.append("run_id is not text")
        rid = clean_text(str(rid))[:80]
    status = r.get("status")
    if status not in ("finished", "running", "interrupted", "failed"):
        problems.append(f"status {clean_text(str(status))[:40]!r} is not one of finished, running, interrupted, failed")
        status = "failed"  # shown with the failed runs: `mixcli run` rebuilds or retrains it
    error = r.get("error")
    if error is not None and not isinstance(error, str):
        error = clean_text(str(error)) if error == error else None
    wall = r.get("wall_time_s")
    if _number(wall) and math.isfinite(wall) and wall >= 0:
        wall = float(wall)
    else:
        if wall is not None and wall == wall:  # (NaN: a run that has no wall time yet)
            problems.append("wall_time_s is not a number")
        wall = None
    raw, cfg = r.get("config"), {}
    if isinstance(raw, str) and len(raw) <= MAX_CONFIG:
        try:
            cfg = json.loads(raw)
        except (ValueError, RecursionError):
            problems.append("config is not JSON (or nested too deeply)")
            cfg = {}
    elif raw is not None and raw == raw:
        problems.append("config is not JSON text" if not isinstance(raw, str) else "config is too long")
    if not isinstance(cfg, dict):
        problems.append("config is not a JSON object")
        cfg = {}
    epochs = r.get("epochs")
    if epochs is not None and epochs == epochs and not _number(epochs):
        problems.append("epochs is not a number")
    where = {k: clean_text(r[k]) if isinstance(r.get(k), str) else "" for k in COLUMNS}  # (NaN: no such column)
    row = {**r, **where, "run_id": rid, "status": status, "error": error, "wall_time_s": wall, "_config": cfg}
    return row, "; ".join(problems) or None


def status_of(target: Path, overrides: list[str], out: Path | None = None) -> tuple[str, Status]:
    """(title, status) of an experiment file or an output directory."""
    if target.is_file():
        from ..config.init_from import with_parents
        from ..config.jobs import expand
        from ..config.spec import load_experiment

        exp = load_experiment(target, overrides)
        if out is not None:
            exp.out = out
        jobs = name_jobs(with_parents(expand(exp)))
        expected = {j.run_id: (j.out, j.title) for j in jobs}
        outs = list(dict.fromkeys(j.out for j in jobs))
        return f"{exp.name}: {len(jobs)} job(s) -> {exp.out}", sweep_status(outs, expected)
    if (target / "runs").is_dir():
        return f"{target}", sweep_status([target])
    raise MixcliError(f"{target}: neither an experiment file nor an output directory (expected {target / 'runs'})")
