"""What SLURM says about the arrays of ``--executor slurm`` (``squeue``), without importing torch: for
``mixcli status`` and the SLURM executor (:mod:`.slurm`)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ARRAYS = "arrays.jsonl"   # OUT/slurm/arrays.jsonl: one line per submitted array


def squeue(ids: list[str]) -> dict[str, str] | None:
    """``{task id (e.g. 123_4): state}`` of the jobs still known to SLURM; None when squeue fails."""
    if not ids or shutil.which("squeue") is None:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        return None
    return dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)


def array_states(out: Path) -> list[tuple[str, dict[str, int]]]:
    """``[(array id, {state: tasks})]`` of the arrays submitted for ``out`` that SLURM still knows
    (``mixcli status``); tasks SLURM forgot (ended) are counted as ``ENDED``."""
    path = Path(out) / "slurm" / ARRAYS
    try:
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    found = []
    for e in entries[-5:]:
        states = squeue([e["array"]])
        counts: dict[str, int] = {}
        for tid in e.get("tasks", {}):
            st = "?" if states is None else states.get(tid, "ENDED")
            counts[st] = counts.get(st, 0) + 1
        found.append((e["array"], counts))
    return found
