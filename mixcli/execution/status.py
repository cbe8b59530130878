"""``mixcli status``: where a sweep stands, read from the store and the claims (never from a process)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config.jobs import name_jobs, titles
from ..errors import MixcliError
from ..results.store import read_table
from .claims import heartbeat_age, holder
from .placement import short

ORDER = ("finished", "running", "interrupted", "failed", "pending")


@dataclass
class Status:
    counts: dict = field(default_factory=lambda: {s: 0 for s in ORDER})
    running: list = field(default_factory=list)      # dicts: run_id, label, holder, heartbeat_s, epoch, epochs
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
        rows += [(out, r) for r in runs.to_dict("records") if expected is None or r["run_id"] in expected]
        if (Path(out) / "slurm").is_dir():
            from .slurm_state import array_states

            st.arrays += array_states(out)
    cfgs = [json.loads(r["config"]) if isinstance(r.get("config"), str) else {} for _, r in rows]
    names = titles(cfgs)  # the runs' names among these runs: method, the values that vary, seed
    for (out, r), cfg, name in zip(rows, cfgs, names):
        rid = r["run_id"]
        seen.add(rid)
        label = expected[rid][1] if expected is not None else name
        status = r["status"]
        if status == "running":
            h = holder(out, rid)
            if h is None:
                status = "interrupted"  # its holder died (SIGKILL, power loss): the next run resumes it
            else:
                epochs = h.get("epochs") or (cfg.get("train") or {}).get("epochs")
                done = h.get("epoch") or 0
                st.running.append({"run_id": rid, "label": label, "holder": f"{h.get('host')}:{h.get('pid')}",
                                   "where": short(h), "heartbeat_s": heartbeat_age(h), "epoch": done,
                                   "epochs": epochs})
                left += 1 - (done / epochs if epochs else 0)
        if status == "interrupted":
            st.interrupted.append(rid)
            left += 1
        if status == "failed":
            st.failed.append((rid, r.get("error") or "", short(r)))
        if status == "finished" and r.get("wall_time_s") == r.get("wall_time_s"):
            walls.append(float(r["wall_time_s"]))
        st.counts[status] = st.counts.get(status, 0) + 1
    if expected is not None:
        st.counts["pending"] = len(set(expected) - seen)
        left += st.counts["pending"]
    if walls and left:
        st.eta_s = sum(walls) / len(walls) * left / max(1, len(st.running))
    elif not left:
        st.eta_s = 0.0
    return st


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
