"""Everything a run keeps: its training state (``checkpoint.pt``, written with its result files by
:class:`StoreWrites`), the best epoch's weights (:class:`Keeper`), an optional per-step log (:class:`StepLog`),
and the parent's weights a fine-tune starts from (:func:`load_init`).

``checkpoint: {keep: last|best|both}`` (default ``last``):

- ``last``: ``jobs/<run_id>/checkpoint.pt``, the last written epoch's full training state (model, optimizer,
  RNGs; written with the epochs table as often as :class:`StoreWrites` says: every epoch unless epochs are
  very short, always the last one, and the latest one when training stops on an exception); it resumes an
  interrupted run, rebuilds damaged result files and serves ``init_from``.
- ``best``: ``jobs/<run_id>/best.pt`` = ``{"model": state_dict, "epoch": E}``, the weights of the best epoch
  (the ``best_epoch`` of the runs row: best primary metric on validation, else test, earliest on ties),
  written whenever an evaluated epoch becomes the best. ``checkpoint.pt`` is still written while the run
  trains (for resuming) and deleted when it finishes, so a finished run can no longer rebuild damaged result
  files or be an ``init_from`` parent.
- ``both``: both files are kept.

``train.log_steps: N`` (default null: off) records the training loss and learning rate of every N-th
optimizer step in ``jobs/<run_id>/steps.parquet`` (columns ``step``, ``epoch``, ``loss``, ``lr``; ``step``
counts optimizer steps from 1). The losses stay on the device and are read once per epoch (no host sync in
the training loop). Neither key changes what a run computes, so neither is part of its run id.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from ..errors import MixcliError
from ..results.selection import PRIMARY, best_index
from ..results.store import Store, atomic_write, write_parquet
from .callbacks import Callback, RunState
from .epoch_writer import EpochWriter, snapshot

KEEP = ("last", "best", "both")
STEP_SCHEMA = pa.schema([("step", pa.int64()), ("epoch", pa.int64()), ("loss", pa.float64()),
                         ("lr", pa.float64())])


def best_path(store: Store, run_id: str):
    return store.job_dir(run_id) / "best.pt"


def steps_path(store: Store, run_id: str):
    return store.job_dir(run_id) / "steps.parquet"


# ------------------------------------------------------------------------------------------ training state
def training_state(run: RunState, listeners: dict, rows: bool = True) -> dict:
    """What resumes ``run`` exactly after its last epoch: weights, optimizer, schedule, every RNG, the epochs
    so far, the method's state and the listeners' (``listeners``: :meth:`Callbacks.state_dict`). Without
    ``rows`` the epochs so far are left out (:func:`with_rows` adds them when the state is written)."""
    state = {
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "torch_rng": torch.get_rng_state(), "data_rng": run.data.generator.get_state().cpu(),
        "method_rng": json.dumps(run.ctx.rng.bit_generator.state),
        "epoch": run.epoch, "wall": run.wall, "started_at": run.started_at, "step": run.ctx.step,
        "attempts": run.attempt, "method": run.method.state_dict(),
    }
    if listeners:
        state["callbacks"] = listeners
    return with_rows(uncompiled(state), run.rows) if rows else uncompiled(state)


def with_rows(state: dict, rows: list[dict]) -> dict:
    """``state`` with the epochs so far (``rows``, every epoch's row: the epochs table's and the others')."""
    state["rows"] = json.dumps(rows)
    return state


def restore(run: RunState, ckpt: dict) -> None:
    """Continue ``run`` from the checkpoint ``ckpt`` (before the method's ``setup``: the method's own state
    is restored after it, by :func:`restore_method`)."""
    run.model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.data.generator.set_state(ckpt["data_rng"].to(run.data.generator.get_state().device))
    run.ctx.rng.bit_generator.state = json.loads(ckpt["method_rng"])
    run.rows = json.loads(ckpt["rows"])
    run.start_epoch, run.wall, run.started_at = ckpt["epoch"] + 1, ckpt["wall"], ckpt["started_at"]
    run.ctx.step = ckpt["step"]


def restore_method(run: RunState, ckpt: dict | None) -> None:
    if ckpt is not None and "method" in ckpt:
        run.method.load_state_dict(ckpt["method"])


def uncompiled(state: dict) -> dict:
    """Strip torch.compile's ``_orig_mod.`` prefixes so checkpoints load into a plain model."""
    sd = state["model"]
    state["model"] = {k.replace("._orig_mod", ""): v for k, v in sd.items()}
    return state


def evaluated(rows: list[dict], task: str) -> list[dict]:
    """The epochs that were evaluated (the rows of the epochs table)."""
    return [r for r in rows if "test_" + PRIMARY[task] in r]


#: the share of a run's time the epoch files may take: after an epoch they are written when the time since
#: the last write is at least the last write's duration / WRITE_SHARE (every epoch unless epochs are shorter
#: than 50 writes)
WRITE_SHARE = 0.02


class StoreWrites(Callback):
    """The run's files: its config and a ``running`` row at the start, the epochs table and the training
    state (``checkpoint.pt``) after epochs, the epochs table and the final row at the end
    (:class:`mixcli.results.store.Store`, every write atomic).

    When to write the epoch's files: after the first epoch of a session, after the last epoch of the run,
    and after any other epoch once the time since the last write is at least 1 / :data:`WRITE_SHARE` (50)
    times that write's duration, so that the writes take at most about 2% of the run's time. With epochs of
    seconds or more that is every epoch; with tiny epochs (the quickstart's last ~0.15 s) every few. The
    state of every epoch end is kept (a snapshot in memory) until a later one replaces it, and when training
    stops on an exception (a failing plugin, Ctrl-C, SIGTERM) the latest one is written before the error
    goes on: an interrupted run resumes from its last finished epoch, exactly as if every epoch had been
    written. Only an abrupt end of the process (SIGKILL, a native crash, an out-of-memory kill) can lose the
    epochs since the last write; the next run resumes from that older checkpoint, again exactly (the
    checkpoint holds every RNG), and retrains them."""

    def __init__(self, listeners_state, share: float | None = None) -> None:
        self.listeners_state = listeners_state  # () -> the listeners' checkpoint state
        self.share = WRITE_SHARE if share is None else share
        self.writer = EpochWriter()  # the epoch's files are written off the training thread, in order
        self.pending: tuple | None = None  # (epoch rows, state snapshot) of an epoch end not yet written
        self.last_write: float | None = None  # perf_counter of the last submitted write (this session)
        self.wrote_last_epoch = False

    def on_start(self, run: RunState) -> None:
        run.store.write_config(run.run_id, run.job.config)
        run.store.write_run({**run.base_row, "status": "running", "epochs": len(run.rows)})

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        # (the rows are plain values that no one changes after their epoch; their JSON is made when written)
        self.pending = (list(run.rows), snapshot(training_state(run, self.listeners_state(), rows=False)))
        now = time.perf_counter()
        last = run.epoch >= run.epochs
        cost = self.writer.seconds
        if last or self.last_write is None or (cost is not None and now - self.last_write >= cost / self.share):
            self._submit(run)
            self.last_write = now
            self.wrote_last_epoch = last

    def _submit(self, run: RunState) -> None:
        rows, state = self.pending
        self.pending = None
        self.writer.submit(_write_epoch, run.store, run.run_id, rows, state, run.job.config["task"])

    def on_exception(self, run: RunState, exc: BaseException) -> None:
        try:
            if self.pending is not None:  # the latest finished epoch reaches the disk (the run resumes there)
                self._submit(run)
        finally:
            self.writer.close(raise_errors=False)  # what was submitted reaches the disk; the error goes on

    def on_end(self, run: RunState, result: dict) -> None:
        self.writer.close()  # every epoch's files are on disk (a failed write is raised here)
        if not self.wrote_last_epoch:  # nothing trained in this session: this rebuilds a damaged epochs file
            run.store.write_epochs(run.run_id, evaluated(run.rows, run.job.config["task"]))
        run.store.write_run(result)


def _write_epoch(store: Store, run_id: str, rows: list[dict], state: dict, task: str) -> None:
    """One epoch's files, in the writer thread: the epochs table, then the training state (``rows``: every
    epoch's row so far)."""
    store.write_epochs(run_id, evaluated(rows, task))
    store.save_checkpoint(run_id, with_rows(state, rows))


# ------------------------------------------------------------------------------------- what else is kept
class Keeper(Callback):
    """Saves the best epoch's weights (``keep`` best or both) and drops the last checkpoint at the end
    (``keep`` best)."""

    def __init__(self, store: Store, run_id: str, keep: str, task: str) -> None:
        self.store, self.run_id, self.keep, self.task = store, run_id, keep, task

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        self.epoch(run.rows, run.model)

    def on_end(self, run: RunState, result: dict) -> None:
        self.finish()

    def epoch(self, rows: list[dict], model) -> None:
        """After an epoch: ``rows`` are all epochs so far; saves the weights if the last one is the best."""
        if self.keep == "last" or "test_" + PRIMARY[self.task] not in rows[-1]:
            return
        evaluated = [r for r in rows if "test_" + PRIMARY[self.task] in r]
        i, _ = best_index(pd.DataFrame(evaluated), self.task)
        if i == len(evaluated) - 1:
            state = {"model": {k.replace("._orig_mod", ""): v for k, v in model.state_dict().items()},
                     "epoch": int(rows[-1]["epoch"])}
            atomic_write(best_path(self.store, self.run_id), lambda f: torch.save(state, f), root=self.store.out)

    def finish(self) -> None:
        if self.keep == "best":
            self.store.remove(self.store.checkpoint_path(self.run_id))


class StepLog(Callback):
    """Every N-th step's loss (a device tensor until the epoch ends) and learning rate."""

    def __init__(self, store: Store, run_id: str, every: int | None, resumed_at_step: int) -> None:
        self.store, self.run_id, self.every = store, run_id, every
        self.rows: list[dict] = []
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        path = steps_path(store, run_id)
        if every and resumed_at_step and path.exists():  # keep the steps the checkpoint had reached
            try:
                old = pq.read_table(path).to_pandas()
                self.rows = old[old["step"] <= resumed_at_step].to_dict("records")
            except Exception:  # noqa: BLE001 - a damaged log starts over
                self.rows = []

    def on_step(self, run: RunState, loss: torch.Tensor) -> None:
        self.step(run.ctx.step, loss, run.opt)

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        run.step_rows = self.flush(row["epoch"])

    def step(self, step: int, loss: torch.Tensor, opt) -> None:
        if self.every and step % self.every == 0:
            self.pending.append((step, loss, opt.param_groups[0]["lr"]))

    def flush(self, epoch: int) -> list[dict]:
        """Read this epoch's losses (one transfer), rewrite the log atomically, return the epoch's rows."""
        if not self.every:
            return []
        new = []
        if self.pending:
            losses = torch.stack([p[1] for p in self.pending]).tolist()
            new = [{"step": s, "epoch": epoch, "loss": v, "lr": lr} for (s, _, lr), v in zip(self.pending, losses)]
            self.rows += new
            self.pending = []
        table = pa.Table.from_pylist(self.rows, schema=STEP_SCHEMA)
        atomic_write(steps_path(self.store, self.run_id), lambda f: write_parquet(table, f), root=self.store.out)
        return new


# ------------------------------------------------------------------------------------------------ init_from
def load_init(model: nn.Module, cfg: dict) -> None:
    """Load the parent's weights into ``model`` (a finished run's final epoch)."""
    init = cfg.get("init_from")
    if not init:
        return
    import pandas as pd

    path, pid = Path(init["checkpoint"]), init["parent"]
    row = path.parent.parent.parent / "runs" / f"{pid}.parquet"
    if row.is_file():
        status = pd.read_parquet(row)["status"].iloc[0]
        if status != "finished":
            raise MixcliError(f"init_from: the parent run {pid} is {status}, not finished; finish it first")
    if not path.is_file():
        raise MixcliError(f"init_from: the checkpoint {path} of the parent run {pid} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage, truncated, or holding objects weights_only refuses
        first = " ".join(str(exc).split())[:200]
        raise MixcliError(f"init_from: {path} is not a readable checkpoint ({type(exc).__name__}: {first})") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise MixcliError(f"init_from: {path} holds no model weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise MixcliError(f"init_from: the weights in {path} do not fit this model: "
                          f"{' '.join(first[:3])}") from None
