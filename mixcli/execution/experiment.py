"""One call for a whole sweep: an experiment file -> validated jobs -> executor -> one outcome per job.

``mixcli run`` is this function plus printing; a notebook, a test or a script calls it directly::

    from mixcli.execution.experiment import run_experiment

    result = run_experiment("experiments/quickstart.yaml", overrides=["train.epochs=3"], device="cpu")
    result.sweep.of("failed")          # the outcomes (mixcli.execution.worker.Outcome) by status
    # the results are in result.plan.exp.out: pandas.read_parquet(out / "runs"), or mixcli.results.compare

Bad input raises :class:`mixcli.errors.MixcliError` (one line) before anything is written; a failing job
never raises (it is recorded failed, see :mod:`.worker`); Ctrl-C / SIGTERM raises ``KeyboardInterrupt``
after the executor has stopped and the runs in progress are recorded interrupted.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config.init_from import with_parents
from ..config.jobs import Job, expand, name_jobs
from ..config.loggers import parse_cli
from ..config.spec import Experiment, load_experiment
from ..results.loggers import open_loggers, prepare_loggers
from ..results.store import Store
from .executors import Executor, cores, make_executor
from .stale import forget, stale_runs
from .sweep import Sweep, run_sweep


MAX_JOBS_PER_CORE = 4  # local CPU workers beyond this only thrash (each is a process with its own torch)


@dataclass
class Plan:
    """What a sweep will train: the experiment, its own jobs (``targets``) and every job to run (``jobs``:
    the targets preceded by the parent runs they fine-tune from)."""

    exp: Experiment
    targets: list[Job]
    jobs: list[Job]


@dataclass
class SweepResult:
    plan: Plan
    sweep: Sweep | None          # None when nothing was started (``retry_failed`` with no failed run)
    executor: Executor | None = None

    @property
    def failed(self) -> list:
        return self.sweep.of("failed") if self.sweep else []

    @property
    def left(self) -> list:
        """The runs left to the live processes holding them (``wait_timeout`` ran out)."""
        return self.sweep.of("left") if self.sweep else []


def plan(experiment: str | Path, overrides: list[str] = (), out: str | Path | None = None,
         log: list[str] | None = None) -> Plan:
    """Read and check an experiment file (with ``--set``-style ``overrides``, another output directory
    ``out`` and ``--log``-style ``log`` options) and expand it into jobs. Nothing is written."""
    exp = load_experiment(experiment, list(overrides))
    if out is not None:
        exp.out = Path(out)
    if log:
        exp.log = parse_cli(log)
    open_loggers(exp.log, exp.out)  # a logger's missing extra fails here, before anything trains
    targets = expand(exp)
    jobs = name_jobs(with_parents(targets))  # fine-tunes of another experiment's runs need those first
    return Plan(exp, targets, jobs)


def _warn(line: str) -> None:
    sys.stderr.write(line + "\n")


def check_stale(jobs: list[Job], rerun: bool, warn: Callable[[str], None] = _warn) -> None:
    """Warn about finished runs made by other plugin package versions; with ``rerun``, forget them so the
    sweep retrains them (:mod:`.stale`)."""
    stale = stale_runs(jobs)
    if not stale:
        return
    if not rerun:
        warn(f"warning: {len(stale)} finished run(s) were produced by other versions of plugin packages this "
             "experiment uses; their results are reused (--rerun-stale retrains them):")
    for job in jobs:
        if job.run_id in stale:
            kept = not rerun or not forget(job)
            verb = "held by another process, not retrained" if rerun and kept else \
                "retrained" if rerun else "reused"
            warn(f"  {job.run_id}: {stale[job.run_id]} ({verb})")


def check_threads(jobs: list[Job], threads: int | None, warn: Callable[[str], None] = _warn) -> None:
    """Warn about runs recorded with another torch thread count than this sweep's: a finished run is reused
    as it is, an interrupted one resumes with the new count (its numbers then differ from a run trained in
    one go with either count)."""
    if not threads:
        return
    odd = []
    for job in jobs:
        row = Store(job.out).run_row(job.run_id) or {}
        had = row.get("threads")
        if had is not None and had == had and int(had) != threads and row.get("status") != "failed":
            odd.append((job.run_id, int(had), row.get("status")))
    if not odd:
        return
    warn(f"warning: {len(odd)} run(s) were trained with another --threads than this sweep's {threads}; a "
         "run's numbers depend on its thread count:")
    for rid, had, st in odd:
        verb = "finished, reused as it is" if st == "finished" else \
            f"{st}, resumes with --threads {threads} (pass --threads {had} to keep its numbers)"
        warn(f"  {rid}: --threads {had} ({verb})")


class _Silent:
    """A display that shows nothing (library use)."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def run_experiment(experiment: str | Path | Plan, overrides: list[str] = (), *, out: str | Path | None = None,
                   log: list[str] | None = None, device: str = "auto", jobs: int | None = None,
                   threads: int | None = None, gpus: str | None = None, jobs_per_gpu: int = 1,
                   executor: str = "local", ray_address: str | None = None, max_retries: int = 3,
                   slurm: dict | None = None, retry_failed: bool = False,
                   rerun_stale: bool = False, in_process: bool = False, wait_timeout: float | None = None,
                   display: Callable[[Executor], object] | None = None,
                   on_start: Callable[[Plan, Executor], None] | None = None,
                   warn: Callable[[str], None] = _warn) -> SweepResult:
    """Run every job of ``experiment`` (a file, or a :func:`plan`), skipping finished runs and resuming
    interrupted ones; the options are ``mixcli run``'s. ``display(executor)`` makes what hears every
    event of the sweep (:func:`.display.make_display`; default: nothing is shown), ``on_start(plan,
    executor)`` is called once the executor is up, before the first job, and ``warn`` receives the warning
    lines (stale runs). ``slurm``: the ``--slurm-*`` options (:class:`.slurm.SlurmOptions`). ``wait_timeout``:
    seconds to wait for a run that another live process holds before leaving it to that process (outcome
    ``left``; None: wait as long as the holder lives)."""
    import math

    from ..errors import MixcliError
    from ..training.engine import pick_device

    if wait_timeout is not None and not (isinstance(wait_timeout, (int, float)) and math.isfinite(wait_timeout)
                                         and wait_timeout >= 0):
        raise MixcliError(f"--wait-timeout {wait_timeout}: expected a number of seconds >= 0")
    p = experiment if isinstance(experiment, Plan) else plan(experiment, overrides, out, log)
    todo = p.jobs
    if executor == "local":  # a bad --device is refused before anything is written (a cluster's devices
        pick_device(device)  # are the cluster's: its executor checks them)
    for o in dict.fromkeys(j.out for j in todo):
        for line in Store(o).move_strays():  # refuses an unwritable output directory before anything starts
            warn(f"note: {line}")
    check_stale(todo, rerun_stale, warn)
    if retry_failed:
        failed_ids = {j.run_id for j in todo if (Store(j.out).run_row(j.run_id) or {}).get("status") == "failed"}
        if not failed_ids:
            return SweepResult(p, None)
        todo = [j for j in todo if j.run_id in failed_ids]
    if jobs is not None and jobs > len(todo) and not in_process:  # (--in-process with --jobs N is refused)
        warn(f"note: --jobs {jobs} capped at the {len(todo)} job(s) this sweep trains")
        jobs = max(1, len(todo))
    if jobs is not None and executor == "local" and pick_device(device).type == "cpu" and jobs > MAX_JOBS_PER_CORE * cores():
        warn(f"note: --jobs {jobs} capped at {MAX_JOBS_PER_CORE} per CPU core ({MAX_JOBS_PER_CORE * cores()} here)")
        jobs = MAX_JOBS_PER_CORE * cores()
    prepare_loggers(todo, warn)  # stores created once, unreachable trackers off for the sweep (one line)
    ex = make_executor(executor, device, jobs, threads, gpus, jobs_per_gpu, ray_address, in_process,
                       n_jobs=len(todo), max_retries=max_retries, slurm=slurm)
    check_threads(todo, ex.threads, warn)
    if on_start is not None:
        on_start(Plan(p.exp, p.targets, todo), ex)
    from .local import sigterm_interrupts

    try:
        with sigterm_interrupts():
            batched = _batched(todo, executor, device, ex, warn)  # train.batch_seeds groups (issue #26)
            sweep = run_sweep([j for j in todo if j.run_id not in batched], ex,
                              display(ex) if display else _Silent(), skip_failed=not retry_failed,
                              wait_timeout=wait_timeout)
            sweep.outcomes.update(batched)
    except KeyboardInterrupt:
        ex.close(interrupted=True)
        raise
    ex.close()
    return SweepResult(p, sweep, ex)


def _batched(todo: list[Job], executor: str, device: str, ex: Executor, warn) -> dict:
    """Train the seed groups that ask for ``train.batch_seeds`` in this process, before the sweep
    (:mod:`.batch_seeds`); ``{run_id: Outcome}`` of the runs settled there (local executor only)."""
    if not any(j.config["train"].get("batch_seeds") for j in todo):
        return {}
    if executor != "local":
        warn(f"note: train.batch_seeds is for the local executor; the {executor} executor trains the seeds "
             "one run at a time")
        return {}
    from ..training.engine import pick_device
    from .batch_seeds import groups, run_batched

    dev = pick_device(device)
    found = groups(todo, dev.type)
    if found:
        warn(f"note: {sum(map(len, found))} run(s) in {len(found)} group(s) of seeds train as batched models "
             "(train.batch_seeds), in this process")
    if not found:
        return {}
    outcomes = run_batched(todo, dev, ex.threads, warn)
    counts = {}
    for o in outcomes.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    warn("note: batched: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items())))
    return outcomes


__all__ = ["run_experiment", "plan", "Plan", "SweepResult", "check_stale"]
