"""Jobs that differ only by their seed, trained as one batched model (``train.batch_seeds``; the trainer is
:mod:`mixcli.training.batched`, what batches :mod:`mixcli.config.batch_seeds`).

:func:`run_batched` is called by :func:`.experiment.run_experiment` before the sweep: it takes each group's
claims, trains the group in this process, and records every member as :func:`.worker.execute` records a
single run (finished, failed with its reason, interrupted). The jobs it did not train (held by another
process, damaged result files, a group of one) go to the sweep as usual.
"""
from __future__ import annotations

import json
import time

from ..config.batch_seeds import auto_batches, refusals
from ..config.jobs import Job
from .claims import Claim
from .placement import placement
from .worker import (FAILED, FINISHED, INTERRUPTED, SKIPPED, Outcome, Tracker, _safe_record, _save_traceback,
                     _signals_held, blame, describe)


def _key(job: Job) -> str:
    cfg = {k: v for k, v in job.config.items() if k != "seed"}
    return json.dumps([str(job.out), cfg], sort_keys=True, default=str)


def groups(jobs: list[Job], device_type: str) -> list[list[Job]]:
    """The groups of >= 2 jobs that are one configuration over several seeds and ask to be batched
    (``batch_seeds: true``, or ``auto`` where it pays on ``device_type``). Fine-tunes of a run of the same
    sweep are left to the sweep (they wait for their parents)."""
    by: dict[str, list[Job]] = {}
    for job in jobs:
        if job.parent is None and job.config["train"].get("batch_seeds") in (True, "auto"):
            by.setdefault(_key(job), []).append(job)
    out = []
    for js in by.values():
        mode = js[0].config["train"]["batch_seeds"]
        if len(js) >= 2 and not refusals(js[0].config) and (
                mode is True or auto_batches(js[0].config, len(js), device_type)):
            out.append(js)
    return out


class _GroupLine:
    """A group's progress as about ten lines (``say``), heard through its first member's tracker."""

    def __init__(self, say, label: str) -> None:
        self.say, self.label, self.epochs = say, label, 0

    def start(self, job, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs = epochs

    def step(self) -> None:
        pass

    def epoch(self, epoch: int, row: dict) -> None:
        if epoch == self.epochs or epoch % max(1, self.epochs // 10) == 0:
            self.say(f"  batched {self.label}: epoch {epoch}/{self.epochs}")


def run_batched(jobs: list[Job], device, threads: int | None = None, say=None) -> dict[str, Outcome]:
    """Train each batched group of ``jobs`` on ``device`` (a torch.device); ``{run_id: Outcome}`` of the
    jobs it settled (finished, skipped, failed). ``say`` hears a few progress lines per group.
    ``KeyboardInterrupt`` is recorded ``interrupted`` for every member in training and raised."""
    from .worker import set_threads

    set_threads(threads)
    outcomes: dict[str, Outcome] = {}
    for group in groups(jobs, device.type):
        seeds = [j.config["seed"] for j in group]
        label = f"{group[0].config['method']['name']} seeds {seeds[0]}..{seeds[-1]} ({len(group)} runs)"
        outcomes.update(_run_group(group, device, _GroupLine(say, label) if say else None))
    return outcomes


def _fail(job, device, exc, tracker, t0, notes) -> Outcome:
    msg = describe(exc)
    from ..errors import RunFailed

    if tracker.started and not isinstance(exc, RunFailed):
        msg += f" (in epoch {tracker.done_epochs + 1})"
    plugin = blame(job, exc.__traceback__)
    _save_traceback(job, exc)
    _safe_record(job, device, FAILED, msg, plugin, tracker.done_epochs if tracker.started else None)
    return Outcome(job.run_id, FAILED, error=msg + (f" [{plugin}]" if plugin else ""),
                   seconds=time.perf_counter() - t0, notes=notes)


def _run_group(group: list[Job], device, line=None) -> dict[str, Outcome]:
    from ..api import PluginError
    from ..errors import MixcliError
    from ..results.store import Store
    from ..training.batched import prepare, train

    t0 = time.perf_counter()
    where = placement()
    outcomes: dict[str, Outcome] = {}
    claims, members, info = [], [], {}
    try:
        for job in group:
            claim = Claim(job.out, job.run_id)
            try:
                if not claim.acquire(where):
                    continue  # held elsewhere: the sweep waits for it
            except MixcliError:
                continue  # the sweep reports the unlockable filesystem
            claims.append(claim)
            store = Store(job.out)
            store.remove_temporaries(job.run_id)
            if store.damaged(job.run_id):
                claim.release()
                claims.remove(claim)
                continue  # the sweep rebuilds its files from the checkpoint
            prev = store.run_row(job.run_id)
            if prev is not None and prev.get("status") == FINISHED:
                outcomes[job.run_id] = Outcome(job.run_id, SKIPPED, row=prev)
                continue
            tracker, notes = Tracker(line if not info else None, claim), []
            info[job.run_id] = (tracker, notes)
            n = (prev or {}).get("attempts")
            try:
                members.append(prepare(job, store, device, tracker, n if n is not None and n >= 0 else None,
                                       notes, where))
            except Exception as exc:  # noqa: BLE001 - that member fails before training, the others go on
                o = _fail(job, device, exc, tracker, t0, notes)
                o.input_error = isinstance(exc, (MixcliError, PluginError))
                outcomes[job.run_id] = o
        by_start: dict[tuple, list] = {}
        for m in members:  # members resumed from different epochs (or with other step counts) train apart
            by_start.setdefault((m.run.start_epoch, m.run.epochs, m.run.steps_per_epoch), []).append(m)

        def on_failed(m, exc):
            tracker, notes = info[m.run.job.run_id]
            outcomes[m.run.job.run_id] = _fail(m.run.job, device, exc, tracker, t0, notes)

        for batch in by_start.values():
            try:
                done = train(batch, on_failed)
            except KeyboardInterrupt:
                with _signals_held():
                    for m in members:
                        rid = m.run.job.run_id
                        if rid in outcomes:
                            continue
                        tracker = info[rid][0]
                        _safe_record(m.run.job, device, INTERRUPTED,
                                     f"interrupted in epoch {tracker.done_epochs + 1}; `mixcli run` of the same "
                                     "file resumes it from its last finished epoch", None,
                                     tracker.done_epochs if tracker.started else None)
                raise
            for m, row in done:
                rid = m.run.job.run_id
                outcomes[rid] = Outcome(rid, FINISHED, row=row, seconds=time.perf_counter() - t0,
                                        notes=info[rid][1])
    finally:
        for c in claims:
            c.release()
    return outcomes


__all__ = ["groups", "run_batched"]
