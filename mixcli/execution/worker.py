"""Executing one job wherever it runs (this process, a pool worker, a Ray task): claim it, repair its
result files, train it through the engine, and record how it ended. Nothing that happens inside a job
escapes as an exception except an interruption: a diverging loss, a plugin raising (``PluginError``
included) or calling ``sys.exit`` all end as a ``failed`` run with the reason, the plugin to blame and the
epoch reached.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
import traceback
from dataclasses import dataclass, field

from ..api import PluginError
from ..errors import MixcliError, RunFailed
from ..config.jobs import Job
from .claims import Claim, ClaimLost
from .placement import placement

#: outcomes of :func:`execute` (``left``: the scheduler gave up waiting for another process's claim)
FINISHED, FAILED, INTERRUPTED, HELD, SKIPPED, LEFT = "finished", "failed", "interrupted", "held", "skipped", "left"


@dataclass
class Outcome:
    run_id: str
    status: str
    row: dict | None = None
    error: str | None = None
    input_error: bool = False        # bad input found before training began (the sweep exits 2)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Tracker:
    """Wraps the caller's progress display; remembers how far the job got and feeds the claim's heartbeat.
    Stops the job (:class:`~.claims.ClaimLost`) at its next step once its claim went to a senior holder."""

    def __init__(self, progress, claim: Claim | None) -> None:
        self.progress, self.claim = progress, claim
        self.started = False
        self.done_epochs = 0

    def _check(self) -> None:
        if self.claim is not None and self.claim.lost is not None:
            raise ClaimLost(self.claim.lost)

    def start(self, job, epochs: int, steps: int, start_epoch: int) -> None:
        self._check()
        self.started, self.done_epochs = True, start_epoch - 1
        if self.claim is not None:
            self.claim.update(write=True, epoch=start_epoch - 1, epochs=epochs, steps=steps)
        if self.progress is not None:
            self.progress.start(job, epochs, steps, start_epoch)

    def step(self) -> None:
        self._check()
        if self.progress is not None:
            self.progress.step()

    def epoch(self, epoch: int, row: dict) -> None:
        self._check()
        self.done_epochs = epoch
        if self.claim is not None:
            keep = {k: v for k, v in row.items() if k in ("train_loss", "test_accuracy", "test_rmse")
                    and isinstance(v, (int, float))}
            self.claim.update(write=True, epoch=epoch, last=keep)
        if self.progress is not None:
            self.progress.epoch(epoch, row)


def blame(job: Job, tb) -> str | None:
    """The plugin of ``job`` whose code raised: the innermost traceback frame in one of its modules."""
    from ..registry import KINDS, REGISTRY, SINGULAR

    modules = {}
    for kind in KINDS:
        spec = job.config.get(SINGULAR[kind])
        name = spec.get("name") if isinstance(spec, dict) else None
        entry = REGISTRY.entries(kind).get(name) if name else None
        if entry is not None:
            modules[entry.target.split(":")[0]] = f"{SINGULAR[kind]} '{name}' ({entry.package})"
    for frame, _ in reversed(list(traceback.walk_tb(tb))):
        mod = frame.f_globals.get("__name__", "")
        for prefix, label in modules.items():
            if mod == prefix or mod.startswith(prefix + "."):
                return label
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"a plugin called sys.exit({exc.code!r})"
    if isinstance(exc, (MixcliError, PluginError, RunFailed)):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


def record(job: Job, device, status: str, error: str, plugin: str | None = None, epochs: int | None = None,
           where: dict | None = None) -> None:
    """Write ``status`` (failed / interrupted) and its reason into the run's row, keeping what it had
    (``epochs``: the epochs completed, when known; ``where``: the placement of the process that trained it,
    :func:`.placement.placement`, when that process records it)."""
    from ..training.engine import identity_row
    from ..results.store import Store

    store = Store(job.out)
    prev = store.run_row(job.run_id) or {}
    store.write_run({**prev, **identity_row(job, device), **(where or {}), "status": status, "error": error,
                     "error_plugin": plugin, "epochs": prev.get("epochs") if epochs is None else epochs})


def record_lost(job: Job, device, reason: str) -> bool:
    """Record ``job`` failed after the process training it died, with the epochs it completed (those its
    checkpoint holds). Takes the claim first so that a process which already took the run over is never
    overwritten; False when one did."""
    claim = Claim(job.out, job.run_id)
    if not claim.acquire():
        return False
    try:
        done = completed_epochs(job)
        record(job, device, FAILED, reason + (f" (in epoch {done + 1})" if done is not None else ""),
               epochs=done)
    finally:
        claim.release()
    return True


def completed_epochs(job: Job) -> int | None:
    """The epochs of ``job``'s run that reached the disk: its checkpoint's epoch, else the last epoch of its
    epochs table (None when it has neither)."""
    from ..results.store import Store

    store = Store(job.out)
    ckpt = store.load_checkpoint(job.run_id)
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        return epoch
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        last = pc.max(pq.read_table(store.table_path("epochs", job.run_id), columns=["epoch"])["epoch"]).as_py()
        return int(last) if last is not None else None
    except Exception:  # noqa: BLE001 - missing or damaged: the epochs are unknown
        return None


def execute(job: Job, device, progress=None) -> Outcome:
    """Claim and run ``job``. Returns ``held`` at once when a live process holds its claim, ``skipped``
    when it is already finished with readable results. ``KeyboardInterrupt`` (SIGINT, and SIGTERM turned
    into it) is recorded as ``interrupted`` and re-raised."""
    from ..training.engine import run_job
    from ..results.store import Store

    t0 = time.perf_counter()
    claim = Claim(job.out, job.run_id)
    where = placement()
    try:
        if not claim.acquire(where):
            return Outcome(job.run_id, HELD)
    except MixcliError as exc:  # the filesystem cannot lock (or its locks are local to each machine)
        return Outcome(job.run_id, FAILED, error=str(exc), input_error=True)
    tracker = Tracker(progress, claim)
    notes: list[str] = []
    try:
        store = Store(job.out)
        store.remove_temporaries(job.run_id)
        for p in store.damaged(job.run_id):
            what = "was damaged" if p.exists() else "was missing"
            notes.append(f"{p.relative_to(job.out)} {what}; rebuilt from the run's checkpoint")
            store.remove(p)
        prev = store.run_row(job.run_id)
        if prev is not None and prev.get("status") == FINISHED and not notes:
            return Outcome(job.run_id, SKIPPED, row=prev)
        n = (prev or {}).get("attempts")
        row = run_job(job, store, device, tracker, prior_attempts=n if n is not None and n >= 0 else None,
                      notes=notes, where=where)
        return Outcome(job.run_id, FINISHED, row=row, seconds=time.perf_counter() - t0, notes=notes)
    except ClaimLost as exc:  # a senior holder trains the run: it records it, this process records nothing
        return Outcome(job.run_id, HELD, notes=[str(exc)], seconds=time.perf_counter() - t0)
    except KeyboardInterrupt:
        if claim.lost is None:
            with _signals_held():  # a second Ctrl-C / SIGTERM must not cut the record short
                _safe_record(job, device, INTERRUPTED, f"interrupted in epoch {tracker.done_epochs + 1}; "
                             "`mixcli run` of the same file resumes it from its last finished epoch", None,
                             tracker.done_epochs if tracker.started else None, claim)
        raise
    except BaseException as exc:  # noqa: BLE001 - everything a job does is contained in the job
        if claim.lost is not None:
            return Outcome(job.run_id, HELD, notes=[claim.lost], seconds=time.perf_counter() - t0)
        msg = describe(exc)
        if tracker.started and not isinstance(exc, RunFailed):  # (RunFailed names its epoch itself)
            msg += f" (in epoch {tracker.done_epochs + 1})"
        plugin = blame(job, exc.__traceback__)
        # the row first: on a full disk it gets the claim's reserve (the traceback is a convenience)
        _safe_record(job, device, FAILED, msg, plugin, tracker.done_epochs if tracker.started else None, claim)
        _save_traceback(job, exc)
        input_error = isinstance(exc, (MixcliError, PluginError)) and not tracker.started
        return Outcome(job.run_id, FAILED, error=msg + (f" [{plugin}]" if plugin else ""),
                       input_error=input_error, seconds=time.perf_counter() - t0, notes=notes)
    finally:
        claim.release()


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait (delivered on exit) while the block runs, in the main thread."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _save_traceback(job: Job, exc: BaseException) -> None:
    from ..results.store import Store

    try:
        store = Store(job.out)
        store.write_file(store.job_dir(job.run_id) / "traceback.txt", "".join(traceback.format_exception(exc)))
    except (OSError, MixcliError):
        pass  # the reason is in the runs row; the traceback file is a convenience


def _safe_record(job, device, status, error, plugin, epochs, claim: Claim | None = None) -> None:
    """:func:`record`, once more after freeing the claim's disk reserve when the disk is full (so that a
    full disk leaves the run ``failed``, which ``--retry-failed`` retrains, rather than ``running``)."""
    for last in (False, True):
        try:
            record(job, device, status, error, plugin, epochs, placement())
            return
        except (OSError, MixcliError) as exc:
            full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            if not last and full and claim is not None and claim.free_reserve():
                continue
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"mixcli: could not record run {job.run_id} as {status}: {why}", flush=True)
            return


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads for the jobs of this process (None: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
