"""SLURM as the executor (``--executor slurm``, through submitit, an optional extra): the runs still to
train are submitted as one job array, one run per array task, with the resources as ``--slurm-*`` options
and ``--slurm-parallelism`` tasks at once. ``mixcli run`` then follows the array (the epochs through the
claims' holder files, :mod:`.follow`; the tasks' states through ``squeue``) and reads every run's outcome.
The claims stay the safety net: a task whose run another process holds ends at once.

Each task writes its log to ``OUT/jobs/<run_id>/slurm.log`` (submitit's own files are under ``OUT/slurm/``).
The time limit: SLURM signals the task ``--slurm-signal-s`` seconds before it (``USR2``); the run records
itself interrupted at once, and the task requeues itself (``scontrol requeue``) while it was requeued fewer
than ``--slurm-requeues`` times; the requeued task resumes the run from its last checkpoint. A preempted
task (``SIGTERM``, requeued by SLURM) records its run interrupted the same way. The arrays are listed in
``OUT/slurm/arrays.jsonl``; ``mixcli status`` shows their tasks' states next to the runs'.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import MixcliError
from .follow import ClaimFollower
from .placement import slurm_job
from .slurm_state import ARRAYS, squeue
from .worker import FAILED, HELD, INTERRUPTED, Outcome, execute, record, record_lost, set_threads

SQUEUE_EVERY_S = 2.0
ABSENT_LOOKS = 3


def _minutes(text: str) -> int:
    """SLURM's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise MixcliError(f"--slurm-time {text}: expected SLURM's format, e.g. 90, 4:00:00 or 1-12:00:00")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        mins = d * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif c is not None:  # HH:MM:SS
        mins = a * 60 + b + (1 if c else 0)
    elif b is not None:  # MM:SS
        mins = a + (1 if b else 0)
    else:
        mins = a
    if mins < 1:
        raise MixcliError(f"--slurm-time {text}: expected at least one minute")
    return mins


@dataclass
class SlurmOptions:
    """The ``--slurm-*`` options of ``mixcli run`` (None: SLURM's or the cluster's default)."""

    partition: str | None = None
    time: str = "1:00:00"
    gpus_per_task: int = 0
    cpus_per_task: int | None = None     # default: --threads, else 1
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list = field(default_factory=list)   # shell lines run before each task (module load ...)
    parallelism: int | None = None              # array tasks at once (the %N of --array)
    requeues: int = 3                           # time-limit / preemption requeues of one task
    signal_s: int = 120                         # USR2 this many seconds before the time limit

    @classmethod
    def of(cls, opts: dict) -> "SlurmOptions":
        names = {f.name for f in fields(cls)}
        o = cls(**{k: v for k, v in opts.items() if k in names and v is not None})
        o.setup = list(o.setup or [])
        _minutes(o.time)
        for name in ("gpus_per_task", "requeues"):
            if getattr(o, name) < 0:
                raise MixcliError(f"--slurm-{name.replace('_', '-')} {getattr(o, name)}: expected 0 or more")
        for name in ("cpus_per_task", "parallelism", "signal_s"):
            v = getattr(o, name)
            if v is not None and v < 1:
                raise MixcliError(f"--slurm-{name.replace('_', '-')} {v}: expected a positive integer")
        return o


class RunTask:
    """What one array task runs: one run (pickled by submitit; runs on the node)."""

    def __init__(self, device: str, threads: int, requeues: int) -> None:
        self.device, self.threads, self.requeues = device, threads, requeues

    def __call__(self, job):
        from ..training.engine import pick_device

        _log_to(Path(job.out) / "jobs" / job.run_id / "slurm.log", job)
        got = []

        def interrupt(signum, frame):
            if not got:
                got.append(signum)
                raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, interrupt)  # (over submitit's own handlers: the run records itself first)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        dev = pick_device(self.device)
        if restarts > self.requeues:
            why = (f"the SLURM task was requeued {restarts} times, more than --slurm-requeues {self.requeues}; "
                   "`mixcli run` again resumes it")
            record(job, dev, FAILED, why)
            return Outcome(job.run_id, FAILED, error=why)
        set_threads(self.threads)
        print(f"mixcli: run {job.run_id} in SLURM job {slurm_job()} (restart {restarts}) on "
              f"{os.environ.get('SLURMD_NODENAME')}, {self.threads} torch thread(s)", flush=True)
        try:
            return execute(job, dev)
        except KeyboardInterrupt:  # recorded interrupted by execute
            sig = got[0] if got else None
            if sig == signal.SIGUSR2 and restarts < self.requeues and os.environ.get("SLURM_JOB_ID"):
                print(f"mixcli: time limit near: requeueing SLURM job {slurm_job()} "
                      f"({restarts + 1} of {self.requeues})", flush=True)
                # (SLURM's name of this task: an array's first task shares its job id with the whole array)
                subprocess.run(["scontrol", "requeue", slurm_job()], check=False)
            else:
                print(f"mixcli: stopped by signal {sig}; the run is recorded interrupted", flush=True)
            sys.stdout.flush()
            os._exit(1)  # no result file: the driver waits for the requeued task (or finds it gone)


def _log_to(path: Path, job) -> None:
    """The task's stdout and stderr, from here on, appended to the run's own log."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class SlurmExecutor:
    """Runs as SLURM array tasks; an :class:`~mixcli.execution.executors.Executor`."""

    def __init__(self, opts: SlurmOptions, device: str, threads: int | None, slots: int | None = None,
                 max_retries: int = 3) -> None:
        try:
            import submitit
        except ImportError:
            raise MixcliError('--executor slurm needs submitit, an optional extra: pip install '
                              '"mixcli[slurm]"') from None
        if shutil.which("sbatch") is None:
            raise MixcliError("--executor slurm: no SLURM here (sbatch is not on PATH); run mixcli on a "
                              "machine that submits to the cluster (a login node)")
        if device == "cuda" and not opts.gpus_per_task:
            raise MixcliError("--device cuda: ask SLURM for a GPU per task (--slurm-gpus-per-task 1)")
        self.submitit, self.opts = submitit, opts
        self.device = "cuda" if opts.gpus_per_task and device != "cpu" else device
        self.dev = self.device
        self.threads = int(threads or opts.cpus_per_task or 1)
        self.cpus = int(opts.cpus_per_task or self.threads)
        self.slots = slots or opts.parallelism or 256
        self.max_retries = max_retries
        self._pending: list = []                 # (job, on_event) not submitted yet
        self._jobs: dict[str, tuple] = {}        # run_id -> (job, on_event, submitit job)
        self._states: dict[str, str] = {}        # slurm task id -> state
        self._last_squeue = 0.0
        self._absent: dict[str, int] = {}        # run_id -> squeue looks in a row without its task
        self.arrays: list[str] = []
        self.follow = ClaimFollower()

    def free(self) -> int:
        return max(0, self.slots - len(self._jobs) - len(self._pending))

    def busy(self) -> int:
        return len(self._jobs) + len(self._pending)

    def submit(self, job, on_event) -> None:
        self._pending.append((job, on_event))  # sent as one array at the next poll

    def _executor(self, out: Path):
        o = self.opts
        ex = self.submitit.SlurmExecutor(folder=str(Path(out) / "slurm"), max_num_timeout=o.requeues)
        params = dict(time=_minutes(o.time), cpus_per_task=self.cpus, signal_delay_s=o.signal_s,
                      array_parallelism=o.parallelism or 256, job_name="mixcli", stderr_to_stdout=True,
                      setup=list(o.setup), additional_parameters={"requeue": True})
        for name in ("partition", "mem", "account", "qos", "constraint"):
            if getattr(o, name):
                params[name] = getattr(o, name)
        if o.gpus_per_task:
            params["gpus_per_task"] = o.gpus_per_task
        ex.update_parameters(**params)
        return ex

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        by_out: dict[str, list] = {}
        for job, on_event in batch:
            by_out.setdefault(str(job.out), []).append((job, on_event))
        for out, items in by_out.items():
            ex = self._executor(Path(out))
            task = RunTask(self.device, self.threads, self.opts.requeues)
            try:
                sjobs = ex.map_array(task, [job for job, _ in items])
            except Exception as exc:  # noqa: BLE001 - sbatch refused (partition, account, qos...)
                text = " ".join(str(getattr(exc, "stderr", "") or exc).split())[:300]
                raise MixcliError(f"--executor slurm: sbatch refused the array: {text}") from None
            array = sjobs[0].job_id.split("_")[0] if sjobs else "?"
            self.arrays.append(array)
            entry = {"array": array, "submitted": time.time(),
                     "tasks": {s.job_id: job.run_id for s, (job, _) in zip(sjobs, items)}}
            with open(Path(out) / "slurm" / ARRAYS, "a") as f:
                f.write(json.dumps(entry) + "\n")
            for s, (job, on_event) in zip(sjobs, items):
                self._jobs[job.run_id] = (job, on_event, s)
                self.follow.add(job, on_event)

    def poll(self, timeout: float) -> None:
        if self._pending:
            self._flush()
        if not self._jobs:
            time.sleep(timeout)
            return
        time.sleep(timeout)
        self.follow.poll()
        now = time.monotonic()
        check_gone = now - self._last_squeue >= SQUEUE_EVERY_S
        if check_gone:
            self._last_squeue = now
            states = squeue([s.job_id for _, _, s in self._jobs.values()])
        for rid, (job, on_event, s) in list(self._jobs.items()):
            outcome = None
            if s.paths.result_pickle.exists():
                outcome = self._result(job, s)
            elif check_gone and states is not None and s.job_id not in states:
                # gone from squeue in three looks in a row (a task being requeued may vanish for a moment)
                self._absent[rid] = self._absent.get(rid, 0) + 1
                if self._absent[rid] >= ABSENT_LOOKS:
                    outcome = self._result(job, s) if s.paths.result_pickle.exists() else self._lost(job, s)
            elif check_gone and states is not None:
                self._absent.pop(rid, None)
            if outcome is not None:
                del self._jobs[rid]
                self.follow.poll(force=True)
                self.follow.remove(rid)
                on_event(("done", rid, outcome))

    def _result(self, job, s) -> Outcome:
        try:
            out = s.result()
            if isinstance(out, Outcome):
                return out
            raise RuntimeError(f"unexpected result {out!r}")
        except Exception as exc:  # noqa: BLE001 - the task raised outside the run (import, pickling)
            reason = f"SLURM task {s.job_id} failed: {' '.join(str(exc).split())[-300:]}"
            return Outcome(job.run_id, FAILED if record_lost(job, self.dev, reason) else HELD, error=reason)

    def _lost(self, job, s) -> Outcome:
        from ..results.store import Store

        row = Store(job.out).run_row(job.run_id) or {}
        log = Path(job.out) / "jobs" / job.run_id / "slurm.log"
        if row.get("status") == INTERRUPTED:
            return Outcome(job.run_id, INTERRUPTED, error=f"SLURM task {s.job_id} stopped (time limit, "
                           f"cancelled or preempted; log: {log}); `mixcli run` again resumes it")
        reason = (f"SLURM task {s.job_id} ended without a result (killed, cancelled or its node lost; "
                  f"log: {log})")
        return Outcome(job.run_id, FAILED if record_lost(job, self.dev, reason) else HELD, error=reason)

    def close(self, interrupted: bool = False) -> None:
        if interrupted and self._jobs and shutil.which("scancel"):
            ids = [s.job_id for _, _, s in self._jobs.values()]
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
