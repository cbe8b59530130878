"""The listener protocol of a training run: one base class with a no-op for every hook, one dispatcher.

:func:`mixcli.training.engine.run_job` trains; everything else that happens while a run trains listens:
the store writes (:class:`mixcli.training.checkpoints.StoreWrites`), the best-epoch keeper
(:class:`~mixcli.training.checkpoints.Keeper`), the per-step log (:class:`~mixcli.training.checkpoints.StepLog`),
the evaluator plugins (:class:`mixcli.training.evaluate.Evaluations`), the live progress of the executor
(:class:`ProgressEvents`) and the logger plugins (:class:`Loggers`). ``run_job`` calls them only through
:class:`Callbacks`, in the order they are listed, at these points::

    on_start(run)                 the run is built and restored; before the first epoch of this session
    on_step(run, loss)            after each optimizer step (``loss``: the step's detached loss, on the device)
    on_evaluate(run, row)         after the regular evaluation of an epoch; may add metrics to ``row``
    on_epoch_end(run, row)        the epoch is complete (``run.rows`` ends with ``row``)
    on_end(run, result)           the run finished; ``result`` is its final runs row
    on_exception(run, exc)        training stopped with ``exc`` (it is raised on to the caller)
    state_dict() / load_state_dict(state)   what a listener keeps in the checkpoint (nothing by default)

``run`` is the :class:`RunState` of the job: what is built, and where the loop stands.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..results import loggers


class Callback:
    """A listener of one run; every hook does nothing unless overridden."""

    def on_start(self, run: "RunState") -> None:
        pass

    def on_step(self, run: "RunState", loss) -> None:
        pass

    def on_evaluate(self, run: "RunState", row: dict) -> None:
        pass

    def on_epoch_end(self, run: "RunState", row: dict) -> None:
        pass

    def on_end(self, run: "RunState", result: dict) -> None:
        pass

    def on_exception(self, run: "RunState", exc: BaseException) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class RunState:
    """One job while it trains: what ``run_job`` built, and where the loop stands."""

    job: Any                 # the mixcli.config.jobs.Job
    store: Any               # the mixcli.results.store.Store of the job's output directory
    device: Any
    data: Any                # the mixcli.data.device.DeviceData
    model: Any
    method: Any
    ctx: Any                 # the method's mixcli.api.Context (``ctx.step``: optimizer steps so far)
    opt: Any
    sched: Any
    epochs: int              # epochs of the whole run
    steps_per_epoch: int
    start_epoch: int = 1     # the first epoch of this session (> 1 when resumed)
    rows: list = field(default_factory=list)   # one dict per epoch so far (the epochs table)
    wall: float = 0.0        # training seconds so far, over every session
    started_at: str = ""
    attempt: int = 1
    base_row: dict = field(default_factory=dict)  # the runs-row columns every status shares
    epoch: int = 0
    step_rows: list = field(default_factory=list)  # the per-step log rows of the epoch that just ended
    notes: list | None = None  # one-line notes for the run's outcome (a logger that failed); None: stderr

    @property
    def run_id(self) -> str:
        return self.job.run_id

    @property
    def job_dir(self):
        return self.store.job_dir(self.job.run_id)


class Callbacks:
    """The listeners of one run, called in order. ``on_exception`` reaches every listener even when one of
    them raises (the first such error is re-raised after all were told)."""

    def __init__(self, listeners: list[Callback]) -> None:
        self.listeners = list(listeners)
        # on_step runs after every optimizer step: only the listeners that override it are called
        self._on_step = [cb for cb in self.listeners
                         if getattr(cb.on_step, "__func__", None) is not Callback.on_step]

    def on_start(self, run: RunState) -> None:
        for cb in self.listeners:
            cb.on_start(run)

    def on_step(self, run: RunState, loss) -> None:
        for cb in self._on_step:
            cb.on_step(run, loss)

    def on_evaluate(self, run: RunState, row: dict) -> None:
        for cb in self.listeners:
            cb.on_evaluate(run, row)

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        for cb in self.listeners:
            cb.on_epoch_end(run, row)

    def on_end(self, run: RunState, result: dict) -> None:
        for cb in self.listeners:
            cb.on_end(run, result)

    def on_exception(self, run: RunState, exc: BaseException) -> None:
        for cb in self.listeners:
            try:
                cb.on_exception(run, exc)
            except Exception:  # noqa: BLE001 - a listener must never hide why the run stopped
                pass

    def state_dict(self) -> dict:
        """``{listener class name: state}`` of the listeners that keep something."""
        return {type(cb).__name__: s for cb in self.listeners if (s := cb.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for cb in self.listeners:
            if type(cb).__name__ in state:
                cb.load_state_dict(state[type(cb).__name__])


class Progress(Protocol):
    """What an executor hears of a run's progress (:class:`mixcli.execution.local.Events`)."""

    def start(self, job, epochs: int, steps: int, start_epoch: int) -> None: ...
    def step(self) -> None: ...
    def epoch(self, epoch: int, row: dict) -> None: ...


class ProgressEvents(Callback):
    """The live progress an executor shows (bars, per-epoch lines)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_start(self, run: RunState) -> None:
        self.progress.start(run.job, run.epochs, run.steps_per_epoch, run.start_epoch)

    def on_step(self, run: RunState, loss) -> None:
        self.progress.step()

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        self.progress.epoch(row["epoch"], row)


class Loggers(Callback):
    """The logger plugins of the job (``log:`` / ``--log``, :mod:`mixcli.results.loggers`): told of every
    session's start, every epoch (with its per-step rows) and the end, also when training stops early
    (``failed``, or ``interrupted`` for Ctrl-C / SIGTERM). A logger that fails is one line in ``run.notes``."""

    fan = None

    def on_start(self, run: RunState) -> None:
        self.fan = loggers.for_job(run.job, {**run.base_row, "status": "running"}, run.notes)

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        self.fan.steps(run.run_id, run.step_rows)
        self.fan.epoch(run.run_id, row)

    def on_end(self, run: RunState, result: dict) -> None:
        self.fan.end(run.store.run_row(run.run_id) or result, run.job_dir)

    def on_exception(self, run: RunState, exc: BaseException) -> None:
        if self.fan is not None:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.fan.end({**run.base_row, "status": status, "epochs": len(run.rows)}, run.job_dir)
