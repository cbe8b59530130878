"""The local executors: a pool of persistent worker processes (the default), or this process, one job at a
time (``--in-process``, for debugging: breakpoints and profilers see the job).

Workers are started when the first job needs them and then kept (``spawn``: torch is imported once per
worker, not per job); each runs one job at a time through :func:`mixcli.execution.worker.execute`, sending
its progress back over a pipe. On CUDA each worker is pinned to one GPU (``CUDA_VISIBLE_DEVICES``),
``jobs_per_gpu`` workers share a GPU; every worker gets ``threads`` torch threads (default
:data:`mixcli.execution.executors.THREADS`). A worker that dies while it runs a job (a native crash in a plugin's
extension, an OOM kill) has the job recorded ``failed`` with the signal, and is replaced; the sweep goes on.
In this process, such a crash would end the whole sweep.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait

from .worker import FAILED, HELD, Outcome, execute, record_lost, set_threads

STEP_EVERY_S = 0.25  # how often a worker reports training steps


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


_INTERRUPTED = []  # in a worker: set once the first interrupt was raised


def _interrupt_once(signum=None, frame=None):
    """A worker's SIGINT/SIGTERM handler: the first signal (or the parent vanishing) interrupts; later ones
    are ignored, so that they cannot cut short the recording of the interrupted run."""
    if _INTERRUPTED:
        return
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt("the mixcli process that started this worker is gone" if signum is None
                            else f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """In a worker: SIGTERM (SLURM's time limit, ``kill``, the parent's death) and SIGINT interrupt once,
    like Ctrl-C: the run is recorded ``interrupted``."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt_once)


@contextlib.contextmanager
def sigterm_interrupts():
    """:func:`sigterm_as_interrupt` for the duration of a block (the previous handler comes back)."""
    try:
        old = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class Events:
    """Progress of one job, forwarded as ``(kind, run_id, payload)`` events to ``send``."""

    def __init__(self, run_id: str, send) -> None:
        self.run_id, self.send = run_id, send
        self.pending, self.last = 0, time.monotonic()

    def start(self, job, epochs: int, steps: int, start_epoch: int) -> None:
        self.send(("start", self.run_id, (epochs, steps, start_epoch)))

    def step(self) -> None:
        self.pending += 1
        now = time.monotonic()
        if now - self.last >= STEP_EVERY_S:
            self.send(("step", self.run_id, self.pending))
            self.pending, self.last = 0, now

    def epoch(self, epoch: int, row: dict) -> None:
        if self.pending:
            self.send(("step", self.run_id, self.pending))
            self.pending = 0
        keep = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        self.send(("epoch", self.run_id, (epoch, keep)))


class InlineExecutor:
    """One job at a time in this process (``--in-process``); an :class:`~mixcli.execution.executors.Executor`."""

    def __init__(self, device: str, threads: int | None) -> None:
        from ..training.engine import pick_device

        self.device, self.threads = pick_device(device), threads
        self.slots, self._queue = 1, []
        set_threads(threads)

    def free(self) -> int:
        return 0 if self._queue else 1

    def busy(self) -> int:
        return len(self._queue)

    def submit(self, job, on_event) -> None:
        self._queue.append((job, on_event))

    def poll(self, timeout: float) -> None:
        if not self._queue:
            time.sleep(timeout)
            return
        job, on_event = self._queue.pop(0)
        outcome = execute(job, self.device, Events(job.run_id, on_event))
        on_event(("done", job.run_id, outcome))

    def close(self, interrupted: bool = False) -> None:
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM this worker when the process that started it dies (SIGKILL included), so that its
    job is recorded interrupted and its claim released for another process to take over."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the pipe closing ends the worker after its current job instead
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _send_or_interrupt(conn):
    def send(msg) -> None:
        try:
            conn.send(msg)
        except (OSError, ValueError):
            _interrupt_once()
    return send


def _worker_main(conn, env: dict, device: str, threads: int | None, parent_pid: int) -> None:
    os.environ.update(env)
    sigterm_as_interrupt()
    _die_with_parent(parent_pid)
    try:
        set_threads(threads)
        from ..training.engine import pick_device

        dev = pick_device(device)
        while True:
            job = conn.recv()
            if job is None:
                return
            send = _send_or_interrupt(conn)
            outcome = execute(job, dev, Events(job.run_id, send))
            send(("done", job.run_id, outcome))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # interrupted (the job was recorded by execute) or the main process went away


class ProcessPool:
    """``workers`` persistent worker processes; ``gpus`` (CUDA): worker i uses gpus[i // jobs_per_gpu]. An
    :class:`~mixcli.execution.executors.Executor`."""

    def __init__(self, workers: int, device: str, threads: int | None, gpus: list[int] | None = None,
                 jobs_per_gpu: int = 1) -> None:
        from ..training.engine import pick_device

        self.dev = pick_device(device)
        self.device, self.threads = device, threads
        self.gpus, self.per_gpu = gpus, jobs_per_gpu
        self.slots = workers
        self._ctx = mp.get_context("spawn")
        self._procs: list = [None] * workers
        self._conns: list = [None] * workers
        self._jobs: list = [None] * workers  # (workers start on their first job: see submit)
        self._sinks: list = [None] * workers  # where the events of worker i's job go

    def _spawn(self, i: int) -> None:
        env = {}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[i // self.per_gpu])
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker_main, args=(child, env, self.device, self.threads, os.getpid()),
                              name=f"mixcli-worker-{i}", daemon=True)
        p.start()
        child.close()
        self._procs[i], self._conns[i], self._jobs[i] = p, parent, None

    def free(self) -> int:
        return sum(j is None for j in self._jobs)

    def busy(self) -> int:
        return self.slots - self.free()

    def submit(self, job, on_event) -> None:
        i = self._jobs.index(None)
        if self._procs[i] is None:
            self._spawn(i)
        self._jobs[i], self._sinks[i] = job, on_event
        self._conns[i].send(job)

    def poll(self, timeout: float) -> None:
        live = [p for p in self._procs if p is not None]
        if not live:
            time.sleep(timeout)
            return
        ready = wait([c for c in self._conns if c is not None] + [p.sentinel for p in live], timeout)
        for i, conn in enumerate(self._conns):
            if conn is not None and conn in ready:
                try:
                    while conn.poll():
                        msg = conn.recv()
                        sink = self._sinks[i]
                        if msg[0] == "done":
                            self._jobs[i] = self._sinks[i] = None
                        sink(msg)
                except (EOFError, OSError):
                    pass  # the worker died: handled below
        for i, p in enumerate(self._procs):
            if p is not None and p.sentinel in ready and not p.is_alive():
                self._lost(i, p.exitcode)

    def _lost(self, i: int, code: int | None) -> None:
        job = self._jobs[i]
        if job is not None:
            if code is not None and code < 0:
                try:
                    why = f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    why = f"killed by signal {-code}"
                if code == -signal.SIGKILL:
                    why += " (out of memory, or killed by the user or scheduler)"
            else:
                why = f"exited with code {code}"
            reason = f"the worker process training it died: {why}"
            sink = self._sinks[i]
            if record_lost(job, self.dev, reason):
                sink(("done", job.run_id, Outcome(job.run_id, FAILED, error=reason)))
            else:
                sink(("done", job.run_id, Outcome(job.run_id, HELD)))
        self._conns[i].close()
        # a new worker starts with the next job
        self._procs[i] = self._conns[i] = self._jobs[i] = self._sinks[i] = None

    def close(self, interrupted: bool = False) -> None:
        for i, p in enumerate(self._procs):
            if p is None:
                continue
            if interrupted and self._jobs[i] is not None and p.is_alive():
                os.kill(p.pid, signal.SIGINT)  # the job records itself interrupted
            else:
                try:
                    self._conns[i].send(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 30
        for p in filter(None, self._procs):
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)
