"""What a run keeps besides its results: the best epoch's weights and an optional per-step log.

``checkpoint: {keep: last|best|both}`` (default ``last``):

- ``last``: ``jobs/<run_id>/checkpoint.pt``, the last epoch's full training state (model, optimizer, RNGs);
  it resumes an interrupted run, rebuilds damaged result files and serves ``init_from``.
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

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .selection import PRIMARY, best_index
from .store import Store, atomic_write

KEEP = ("last", "best", "both")
STEP_SCHEMA = pa.schema([("step", pa.int64()), ("epoch", pa.int64()), ("loss", pa.float64()),
                         ("lr", pa.float64())])


def best_path(store: Store, run_id: str):
    return store.job_dir(run_id) / "best.pt"


def steps_path(store: Store, run_id: str):
    return store.job_dir(run_id) / "steps.parquet"


class Keeper:
    """Saves the best epoch's weights (``keep`` best or both) and drops the last checkpoint at the end
    (``keep`` best)."""

    def __init__(self, store: Store, run_id: str, keep: str, task: str) -> None:
        self.store, self.run_id, self.keep, self.task = store, run_id, keep, task

    def epoch(self, rows: list[dict], model) -> None:
        """After an epoch: ``rows`` are all epochs so far; saves the weights if the last one is the best."""
        if self.keep == "last" or "test_" + PRIMARY[self.task] not in rows[-1]:
            return
        evaluated = [r for r in rows if "test_" + PRIMARY[self.task] in r]
        i, _ = best_index(pd.DataFrame(evaluated), self.task)
        if i == len(evaluated) - 1:
            state = {"model": {k.replace("._orig_mod", ""): v for k, v in model.state_dict().items()},
                     "epoch": int(rows[-1]["epoch"])}
            atomic_write(best_path(self.store, self.run_id), lambda f: torch.save(state, f))

    def finish(self) -> None:
        if self.keep == "best":
            self.store.checkpoint_path(self.run_id).unlink(missing_ok=True)


class StepLog:
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
        atomic_write(steps_path(self.store, self.run_id), lambda f: pq.write_table(table, f))
        return new
