"""Progress of jobs that train out of this process's sight (Ray tasks, SLURM array tasks), read from their
claims' holder files (:mod:`.claims`): the process training a run rewrites that file at the start and at
every epoch, so the driver turns it into the executor events ``start``, ``step`` and ``epoch`` without a
channel to the worker (a shared filesystem is already required)."""
from __future__ import annotations

import json
import time
from datetime import datetime

from .claims import claims_dir

EVERY_S = 0.5


class ClaimFollower:
    """Follows the holder files of the submitted jobs; :meth:`poll` sends the events of what changed."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple] = {}    # run_id -> (job, on_event, submitted at: epoch seconds)
        self.seen: dict[str, int] = {}      # run_id -> epochs reported
        self.last = 0.0

    def add(self, job, on_event) -> None:
        self.jobs[job.run_id] = (job, on_event, time.time())

    def remove(self, run_id: str) -> None:
        self.jobs.pop(run_id, None)
        self.seen.pop(run_id, None)

    def started(self, run_id: str) -> bool:
        return run_id in self.seen

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < EVERY_S:
            return
        self.last = now
        for rid, (job, on_event, since) in list(self.jobs.items()):
            try:
                info = json.loads((claims_dir(job.out) / f"{rid}.json").read_text())
                began = datetime.fromisoformat(info["since"]).timestamp()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if began < since - 2 or info.get("epochs") is None:
                continue  # a holder file older than our task (left by a killed holder), or not training yet
            epoch, steps = int(info.get("epoch") or 0), int(info.get("steps") or 0)
            if rid not in self.seen:
                self.seen[rid] = epoch
                on_event(("start", rid, (int(info["epochs"]), steps, epoch + 1)))
            elif epoch > self.seen[rid]:
                if steps:
                    on_event(("step", rid, steps * (epoch - self.seen[rid])))
                self.seen[rid] = epoch
                on_event(("epoch", rid, (epoch, info.get("last") or {})))
