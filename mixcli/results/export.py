"""``mixcli export OUT --to NAME``: send results that already exist through a logger, with the same calls
a live run makes (:class:`mixcli.api.Logger`)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..config.jobs import titles
from ..config.loggers import check_names
from ..errors import MixcliError
from .loggers import one_line, open_loggers, run_files, tags_of
from .runs import group_keys, load_runs, varying_keys
from .store import read_table


def export(out: Path, to: str, uri: str | None) -> tuple[int, int]:
    """Send every run under ``out`` (with its epochs and files) to the logger ``to``. Runs the destination
    already holds are skipped. The grid is not stored with the results, so the ``grid.<key>`` tags are the
    configuration keys that vary between the runs under ``out`` (as ``compare`` groups them; a plugin by its
    name), and the run names (``mixup alpha=0.4 s1``) tell the runs under ``out`` apart. Each run keeps its own
    start and end time. A destination that cannot be reached or a damaged store is a one-line error.
    Returns (exported, skipped)."""
    check_names({to: None}, "--to")
    runs = load_runs(out)
    epochs = read_table(out, "epochs")
    keys = [k for k in varying_keys(runs) if k != "method" or runs["method"].nunique() > 1]
    grid = group_keys(runs, keys) if keys else None
    names = titles([json.loads(c) if isinstance(c, str) else {} for c in runs["config"]])
    (logger,) = open_loggers({to: uri}, out)
    where = uri or "its default destination"
    try:
        logger.prepare(sorted(runs["experiment"].astype(str).unique()))
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        raise MixcliError(f"--to {to} ({where}): {one_line(exc)}") from None
    done = skipped = 0
    try:
        for i, run in enumerate(runs.to_dict("records")):
            row = {k: run[k] for k in run if "." not in k}  # the runs row without the flattened config
            if logger.exists(row):
                skipped += 1
                continue
            logger.start(row, tags_of(row, grid.iloc[i].to_dict() if grid is not None else {}, names[i]))
            steps = _steps(Path(out) / "jobs" / row["run_id"] / "steps.parquet")
            for ep in epochs[epochs["run_id"] == row["run_id"]].sort_values("epoch").to_dict("records"):
                in_epoch = [s for s in steps if s["epoch"] == ep["epoch"]]
                if in_epoch:
                    logger.steps(row["run_id"], in_epoch)
                logger.epoch(row["run_id"], ep)
            logger.end(row, run_files(Path(out) / "jobs" / row["run_id"]))
            done += 1
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        raise MixcliError(f"--to {to} ({where}): {one_line(exc)} ({done} run(s) exported before it; "
                          "run the export again to send the rest)") from None
    finally:
        with contextlib.suppress(Exception):
            logger.close()
    return done, skipped


def _steps(path: Path) -> list[dict]:
    """The per-step log of a run (``train.log_steps``), [] when it has none or it cannot be read."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception:  # noqa: BLE001 - a damaged log is left out of the export, not fatal
        return []
