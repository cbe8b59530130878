"""``mixcli export OUT --to NAME``: send results that already exist through a logger, with the same calls
a live run makes (:class:`mixcli.api.Logger`)."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..config.jobs import titles
from ..config.loggers import check_names
from ..errors import MixcliError
from .loggers import one_line, open_loggers, run_files, tags_of
from .runs import (clean_line, group_keys, load_runs, parse_config, read_results, read_side_file, stderr_warning,
                   varying_keys)


def export(out: Path, to: str, uri: str | None) -> tuple[int, int]:
    """Send every run under ``out`` (with its epochs and files) to the logger ``to``. Runs the destination
    already holds are skipped. The grid is not stored with the results, so the ``grid.<key>`` tags are the
    configuration keys that vary between the runs under ``out`` (as ``compare`` groups them; a plugin by its
    name), and the run names (``mixup alpha=0.4 s1``) tell the runs under ``out`` apart. Each run keeps its own
    start and end time. A destination that cannot be reached or a damaged store is a one-line error.
    Returns (exported, skipped)."""
    check_names({to: None}, "--to")
    runs = load_runs(out)
    epochs = read_results(out, "epochs")
    keys = [k for k in varying_keys(runs) if k != "method" or runs["method"].nunique() > 1]
    grid = group_keys(runs, keys) if keys else None
    names = titles([parse_config(c)[0] or {} for c in runs["config"]])
    (logger,) = open_loggers({to: uri}, out)
    where = clean_line(uri or "its default destination", 200)
    check_destination(to, logger, where)
    with _background() as failed:
        done, skipped = _send(logger, runs, epochs, grid, names, Path(out), to, where)
    if failed:  # e.g. TensorBoard's writer thread met a full disk after the runs were handed to it
        raise MixcliError(f"--to {to} ({where}): {one_line(failed[0])} (while writing in the background; "
                          "run the export again once the destination is fixed)")
    return done, skipped


def _send(logger, runs, epochs, grid, names, out: Path, to: str, where: str) -> tuple[int, int]:
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
            logger.end(row, _files(Path(out) / "jobs" / row["run_id"]))
            done += 1
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        raise MixcliError(f"--to {to} ({where}): {one_line(exc)} ({done} run(s) exported before it; "
                          "run the export again to send the rest)") from None
    finally:
        with contextlib.suppress(Exception):
            logger.close()
    return done, skipped


@contextlib.contextmanager
def _background():
    """While a logger sends the runs: an exception in one of its threads is kept (and reported in one line
    by the caller), not printed as a traceback; its libraries' log lines are not shown."""
    import logging
    import threading

    failed: list[BaseException] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: failed.append(args.exc_value)
    logging.disable(logging.CRITICAL)
    try:
        yield failed
    finally:
        threading.excepthook = hook
        logging.disable(logging.NOTSET)


def destination_folders(to: str, logger) -> list[Path]:
    """The local folders a logger writes to (checked before anything is sent): TensorBoard's root, the
    folder of an MLflow sqlite database (and its artifacts) or ``file:`` store, W&B's offline folder."""
    if to == "tensorboard":
        return [Path(logger.root)]
    if to == "mlflow":
        db = logger.database()
        if db is not None:
            if db.is_dir() or (db.is_symlink() and not db.exists()):
                raise MixcliError(f"--to mlflow ({clean_line(logger.tracking_uri, 200)}): the database "
                                  f"{clean_line(db, 200)} is a folder or a link to nothing, expected a file")
            return [db.parent]
        uri = logger.tracking_uri
        if uri.startswith("file:"):
            from urllib.parse import urlparse

            return [Path(urlparse(uri).path)]
        if "://" not in uri:  # a plain local path is a file store
            return [Path(uri)]
        return []
    if to == "wandb":
        return [Path(logger.root()) / "wandb"]
    return []


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"it is read-only: {exc.strerror}"
    return str(exc.strerror or exc)


def check_destination(to: str, logger, where: str) -> None:
    """Every local destination folder is a folder this process can write to, or one line naming it:
    a file, a link to nothing, a folder that cannot be created, read-only, or on a full disk (a few kB are
    written and removed to tell). A tracking server is checked by the logger itself, within seconds."""
    for d in destination_folders(to, logger):
        name = clean_line(d, 200)
        head = f"--to {to} ({where}): the destination {name}"
        if d.is_symlink() and not d.exists():
            raise MixcliError(f"{head} is a symbolic link to nothing ({clean_line(os.readlink(d), 120)})")
        if d.exists() and not d.is_dir():
            raise MixcliError(f"{head} is a file, expected a folder")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixcliError(f"{head} cannot be created ({_why(exc)})") from None
        probe = d / f".mixcli-probe-{os.getpid()}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                os.write(fd, b"\0" * 65536)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise MixcliError(f"{head} cannot be written to ({_why(exc)})") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)


def _files(job_dir: Path) -> list[Path]:
    """The run's artifacts to send (config.yaml, its PNGs): regular files inside the run's folder only, so
    that a link planted in ``OUT`` never sends a file from elsewhere to the tracker."""
    if job_dir.is_symlink() or not job_dir.is_dir():
        return []
    keep = []
    for f in run_files(job_dir):
        rel = f.relative_to(job_dir).parts
        try:
            if not any(job_dir.joinpath(*rel[:k + 1]).is_symlink() for k in range(len(rel))) and f.is_file():
                keep.append(f)
        except OSError:
            continue
    return keep


STEP_COLUMNS = ("epoch", "step", "loss", "lr")


def _steps(path: Path) -> list[dict]:
    """The per-step log of a run (``train.log_steps``), [] when it has none; one that cannot be read or is
    not what mixcli writes is left out of the export with a warning."""
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists() and not path.is_symlink():
        return []
    try:
        rows = pq.read_table(pa.BufferReader(read_side_file(path))).to_pylist()
        for r in rows:
            vals = [r[c] for c in STEP_COLUMNS]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) or \
                    not all(math.isfinite(float(v)) or c in ("loss", "lr") for c, v in zip(STEP_COLUMNS, vals)):
                raise ValueError("a row is not (epoch, step, loss, lr) numbers")
        return rows
    except Exception as exc:  # noqa: BLE001 - a damaged log is left out of the export, not fatal
        stderr_warning(f"left out the step log {clean_line(path)} ({clean_line(exc if type(exc) is ValueError else type(exc).__name__, 80)})")
        return []
