"""Finished runs of a sweep that other plugin package versions produced (see
:func:`mixcli.training.provenance.stale_reason`): found before the sweep starts, forgotten on request
(``mixcli run --rerun-stale``) so that the sweep trains them again."""
from __future__ import annotations

from ..results.store import Store
from ..training.provenance import stale_reason
from .claims import Claim


def stale_runs(jobs: list) -> dict[str, str]:
    """``{run_id: reason}`` for the jobs whose finished run is stale (see :func:`stale_reason`)."""
    found = {}
    for job in jobs:
        reason = stale_reason(Store(job.out).run_row(job.run_id), job.config)
        if reason:
            found[job.run_id] = reason
    return found


def forget(job) -> bool:
    """Delete the results of ``job``'s finished run (runs and epochs rows, checkpoint) so the next sweep
    trains it from scratch. Takes the run's claim first; False when another process holds it."""
    claim = Claim(job.out, job.run_id)
    if not claim.acquire():
        return False
    try:
        store = Store(job.out)
        for p in (store.table_path("runs", job.run_id), store.table_path("epochs", job.run_id),
                  store.checkpoint_path(job.run_id)):
            store.remove(p)
    finally:
        claim.release()
    return True
