"""The scheduler: hands the jobs of a sweep to an executor, parents before the runs fine-tuned from them,
waits for runs that another live process holds (taking them over if their holder dies), and collects one
outcome per job. Executors (:mod:`.local`, :mod:`.ray_executor`) hide where a job runs; the scheduler never
trains anything itself and never reads another process's in-flight state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..store import Store
from .worker import FAILED, FINISHED, HELD, INTERRUPTED, SKIPPED, Outcome

HELD_RETRY_S = 2.0  # how often a run held by another process is looked at again


@dataclass
class Sweep:
    outcomes: dict = field(default_factory=dict)   # run_id -> Outcome
    by_others: set = field(default_factory=set)    # runs that another process finished while we waited

    def of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == status]


def _finished_and_readable(store: Store, run_id: str) -> dict | None:
    row = store.run_row(run_id)
    if row is not None and row.get("status") == FINISHED and not store.damaged(run_id):
        return row
    return None


def run_sweep(jobs: list, executor, display, skip_failed: bool = True) -> Sweep:
    """Run ``jobs`` (parents first) on ``executor``; ``display`` hears every event. With ``skip_failed``,
    runs recorded ``failed`` by an earlier sweep are left alone (``--retry-failed`` reruns them)."""
    sweep = Sweep()
    stores: dict = {}
    queue = list(jobs)
    retry_at: dict[str, float] = {}
    by_id = {j.run_id: j for j in jobs}
    running: set[str] = set()

    def store_of(job) -> Store:
        key = str(job.out)
        if key not in stores:
            stores[key] = Store(job.out)
        return stores[key]

    def done(rid: str, outcome: Outcome) -> None:
        running.discard(rid)
        if outcome.status == HELD:
            retry_at[rid] = time.monotonic() + HELD_RETRY_S
            if rid not in sweep.outcomes:
                display.held(by_id[rid])
            queue.append(by_id[rid])
            sweep.outcomes.setdefault(rid, outcome)
            return
        if retry_at.pop(rid, None) is not None and outcome.status == SKIPPED:
            sweep.by_others.add(rid)
        sweep.outcomes[rid] = outcome
        display.done(by_id[rid], outcome)

    def on_event(ev) -> None:
        kind, rid, payload = ev
        if kind == "done":
            done(rid, payload)
        else:
            display.progress(by_id[rid], kind, payload)

    executor.on_event = on_event

    def next_job():
        now = time.monotonic()
        for k, job in enumerate(queue):
            if retry_at.get(job.run_id, 0) > now:
                continue
            parent = job.parent
            if parent is not None and parent.run_id in by_id:
                po = sweep.outcomes.get(parent.run_id)
                if po is None or po.status == HELD:
                    continue  # the parent has not finished yet
                if po.status not in (FINISHED, SKIPPED):
                    queue.pop(k)
                    done(job.run_id, Outcome(job.run_id, FAILED, error=f"its init_from parent {parent.run_id} "
                                             f"is {po.status}; not started"))
                    return next_job()
            queue.pop(k)
            return job
        return None

    display.begin(len(jobs))
    while queue or running:
        while executor.free() > 0:
            job = next_job()
            if job is None:
                break
            store = store_of(job)
            row = _finished_and_readable(store, job.run_id)
            if row is not None:
                done(job.run_id, Outcome(job.run_id, SKIPPED, row=row))
                continue
            if skip_failed and job.run_id not in retry_at:
                prev = store.run_row(job.run_id)
                if prev is not None and prev.get("status") == FAILED:
                    done(job.run_id, Outcome(job.run_id, FAILED, row=prev, error=prev.get("error"),
                                             notes=["failed in an earlier sweep; not retried"]))
                    continue
            running.add(job.run_id)
            display.submitted(job)
            executor.submit(job)
        if not running and queue and executor.free() > 0:
            time.sleep(0.2)  # only runs held elsewhere (or waiting for their parent) remain
        executor.poll(0.2 if running else 0.0)
    display.end()
    return sweep


__all__ = ["run_sweep", "Sweep", "FINISHED", "FAILED", "INTERRUPTED", "HELD", "SKIPPED"]
