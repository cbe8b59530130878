"""The scheduler: hands the jobs of a sweep to an executor, parents before the runs fine-tuned from them,
waits for runs that another live process holds (taking them over if their holder dies), and collects one
outcome per job. Executors (:mod:`.local`, :mod:`.ray_executor`, :mod:`.slurm`) hide where a job runs; the
scheduler never trains anything itself. Waiting for a run that another process holds costs nothing: the
scheduler looks at the run's claim itself (:func:`.claims.holder`) and submits the run again only once its
holder has gone (to find it finished, or to take it over). While it waits it says for what (the run, its
holder ``host:pid``) and for how long, at once when the holder stops beating (stalled: SIGSTOPped, hung);
with ``wait_timeout`` it gives up after that many seconds: the run is left to its holder (outcome ``left``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..results.store import Store
from .claims import holder, stalled_for
from .executors import Executor
from .worker import FAILED, FINISHED, HELD, INTERRUPTED, LEFT, SKIPPED, Outcome

HELD_RETRY_S = 2.0  # how often a run held by another process is looked at again
WAIT_REPORT_S = 60.0  # how often a process waiting for other processes' runs says so again


@dataclass
class Sweep:
    outcomes: dict = field(default_factory=dict)   # run_id -> Outcome
    by_others: set = field(default_factory=set)    # runs that another process finished while we waited

    def of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == status]


class Scheduler:
    def __init__(self, jobs: list, executor: Executor, display, skip_failed: bool,
                 wait_timeout: float | None = None) -> None:
        self.queue = list(jobs)
        self.wait_timeout = wait_timeout
        self.wait_since: dict[str, float] = {}   # run_id -> when this process first found it held
        self.reported: dict[str, tuple] = {}     # run_id -> (when last said, stalled then)
        self.by_id = {j.run_id: j for j in jobs}
        self.executor, self.display, self.skip_failed = executor, display, skip_failed
        self.sweep = Sweep()
        self.running: set[str] = set()
        self.retry_at: dict[str, float] = {}   # runs held elsewhere -> when to look again
        self.waiting: dict[str, object] = {}   # run_id -> job held by another live process
        self.stores: dict[str, Store] = {}

    def store(self, job) -> Store:
        key = str(job.out)
        if key not in self.stores:
            self.stores[key] = Store(job.out)
        return self.stores[key]

    def on_event(self, ev) -> None:
        kind, rid, payload = ev
        if kind == "done":
            self.done(rid, payload)
        else:
            self.display.progress(self.by_id[rid], kind, payload)

    def done(self, rid: str, outcome: Outcome) -> None:
        self.running.discard(rid)
        job = self.by_id[rid]
        if outcome.status == HELD:
            now = time.monotonic()
            self.wait_since.setdefault(rid, now)
            for note in outcome.notes:
                self.display.note(job, note)
            self.retry_at[rid] = now + HELD_RETRY_S
            self.waiting[rid] = job
            self.report_wait(job, holder(job.out, rid), now)
            return
        if self.retry_at.pop(rid, None) is not None and outcome.status == SKIPPED:
            self.sweep.by_others.add(rid)
        self.sweep.outcomes[rid] = outcome
        self.display.done(job, outcome)

    def next_job(self):
        """The first queued job that may start now (not held elsewhere, its parent finished)."""
        now = time.monotonic()
        for k, job in enumerate(self.queue):
            if self.retry_at.get(job.run_id, 0) > now:
                continue
            parent = job.parent
            if parent is not None and parent.run_id in self.by_id:
                po = self.sweep.outcomes.get(parent.run_id)
                if po is None:
                    continue  # the parent has not ended yet
                if po.status not in (FINISHED, SKIPPED):
                    self.queue.pop(k)
                    self.done(job.run_id, Outcome(job.run_id, FAILED, error=f"its init_from parent "
                                                  f"{parent.run_id} is {po.status}; not started"))
                    return self.next_job()
            return self.queue.pop(k)
        return None

    def dispatch(self, job) -> None:
        store = self.store(job)
        row = store.run_row(job.run_id)
        status = (row or {}).get("status")
        if status == FINISHED and not store.damaged(job.run_id):
            self.done(job.run_id, Outcome(job.run_id, SKIPPED, row=row))
        elif status == FAILED and self.skip_failed and job.run_id not in self.retry_at:
            self.done(job.run_id, Outcome(job.run_id, FAILED, row=row, error=row.get("error"),
                                          notes=["failed in an earlier sweep; not retried"]))
        elif holder(job.out, job.run_id) is not None:
            self.done(job.run_id, Outcome(job.run_id, HELD))  # a live process trains it: no task for it
        else:
            self.running.add(job.run_id)
            self.display.submitted(job)
            self.executor.submit(job, self.on_event)

    def report_wait(self, job, info: dict | None, now: float) -> None:
        """Say what this process waits for: at first, every :data:`WAIT_REPORT_S`, and when its holder
        starts or stops being stalled."""
        if info is None:
            return
        stalled = stalled_for(info)
        last = self.reported.get(job.run_id)
        if last is None or now - last[0] >= WAIT_REPORT_S or (stalled is not None) != last[1]:
            self.reported[job.run_id] = (now, stalled is not None)
            self.display.waiting(job, info, now - self.wait_since.get(job.run_id, now), stalled, self.wait_timeout)

    def look_at_waiting(self) -> None:
        """Runs held elsewhere whose holder has gone go back to the queue (found finished, or taken over);
        past ``wait_timeout``, a run still held is left to its holder."""
        now = time.monotonic()
        for rid, job in list(self.waiting.items()):
            if self.retry_at.get(rid, 0) > now:
                continue
            info = holder(job.out, rid)
            if info is None:
                del self.waiting[rid]
                self.queue.insert(0, job)
            elif self.wait_timeout is not None and now - self.wait_since[rid] >= self.wait_timeout:
                del self.waiting[rid]
                stalled = stalled_for(info)
                who = f"{info.get('host') or '?'}:{'?' if info.get('pid') is None else info['pid']}"
                state = f"stalled for {stalled:.0f} s" if stalled is not None else "alive"
                self.done(rid, Outcome(rid, LEFT, error=f"left to its holder {who} ({state}) after waiting "
                                       f"{now - self.wait_since[rid]:.0f} s (--wait-timeout {self.wait_timeout:g})"))
            else:
                self.report_wait(job, info, now)
                self.retry_at[rid] = now + HELD_RETRY_S

    def run(self) -> Sweep:
        self.display.begin(len(self.queue))
        try:
            while self.queue or self.running or self.waiting:
                self.look_at_waiting()
                while self.executor.free() > 0 and (job := self.next_job()) is not None:
                    self.dispatch(job)
                if not self.running and (self.queue or self.waiting):
                    time.sleep(0.2)  # only runs held elsewhere (or waiting for a parent) remain
                self.executor.poll(0.2 if self.running else 0.0)
        finally:
            self.display.end()
        return self.sweep


def run_sweep(jobs: list, executor: Executor, display, skip_failed: bool = True,
              wait_timeout: float | None = None) -> Sweep:
    """Run ``jobs`` (parents first) on ``executor``; ``display`` hears every event. With ``skip_failed``,
    runs recorded ``failed`` by an earlier sweep are left alone (``--retry-failed`` reruns them).
    ``wait_timeout``: seconds to wait for a run another live process holds before leaving it to that process
    (None: as long as its holder lives)."""
    return Scheduler(jobs, executor, display, skip_failed, wait_timeout).run()


__all__ = ["run_sweep", "Sweep", "FINISHED", "FAILED", "INTERRUPTED", "HELD", "SKIPPED", "LEFT"]
