"""The result store: parquet files under the output directory, each written atomically.

Layout of ``OUT``::

    runs/<run_id>.parquet      one row per run (``pandas.read_parquet(OUT / "runs")`` reads them all)
    epochs/<run_id>.parquet    one row per evaluated epoch (``pandas.read_parquet(OUT / "epochs")``)
    jobs/<run_id>/config.yaml  the fully resolved configuration of the run
    jobs/<run_id>/checkpoint.pt  the last written epoch's training state (model, optimizer, RNGs), for
                                 resuming (when it is written: mixcli.training.checkpoints.StoreWrites)

Every file is written to a hidden temporary file in the same directory and renamed over the target, so a
crash never leaves a half-written file (pyarrow ignores the hidden temporaries when reading a directory;
temporaries left by a kill mid-write are removed by the next ``run`` that claims the run). Files get the
permissions of the user's umask, like any file the user creates.

All files of a table share one fixed Arrow schema, whatever the task or the run's status (a column that is
empty in one run is typed, never ``null``), so ``pandas.read_parquet(OUT / "runs")`` reads a directory mixing
finished, failed, interrupted and running runs. A file that cannot be read (truncated, garbage) is reported
by :func:`check_files` and rebuilt by the next ``run`` from the run's checkpoint; the reports skip it with a
warning.
"""
from __future__ import annotations

import errno
import functools
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .. import fs
from ..errors import MixcliError
from ..metrics import METRICS, evaluator_metrics

SPLITS = ("val", "test")
LIST_METRICS = ("per_class_recall", "per_class_coverage")
SCALARS = tuple(METRICS)

#: the columns of a runs row, in order, with their meaning (documented in the README)
_RUN_BASE: dict[str, str] = {
    "run_id": "stable id: method, seed and a hash of the resolved configuration",
    "experiment": "the experiment's name",
    "method": "method plugin name", "dataset": "dataset plugin name", "model": "model plugin name",
    "loss": "loss plugin name", "task": "classification or regression", "seed": "the run's seed",
    "status": "running, finished, failed or interrupted (a run whose holder died also reads running until "
              "the next run or `mixcli status` finds its claim free)",
    "error": "why a failed or interrupted run stopped",
    "error_plugin": "the plugin whose code raised, for a failed run (e.g. method 'mixup')",
    "attempts": "how many times training of this run was started (1 for a run trained in one go)",
    "host": "the host that last trained the run", "pid": "the process id that last trained the run",
    "threads": "torch's intra-op threads in the process that last trained the run (mixcli run --threads; "
               "the numbers depend on it)",
    "slurm_job": "the SLURM job that last trained the run (<array job>_<task> for an array task)",
    "node": "the node that last trained the run (SLURM's node name, else the host)",
    "ray_node": "the Ray node id that last trained the run", "ray_task": "the Ray task id that last trained it",
    "config": "the fully resolved configuration, as JSON",
    "selection": "the epoch selection rule the experiment asks reports to use (eval.selection)",
    "epochs": "epochs completed", "best_epoch": "the epoch selected by the best-epoch rule",
    "best_on": "the split the best epoch was selected on (val when the dataset has one, else test)",
    "wall_time_s": "training wall time in seconds (summed over resumed sessions)",
    "device": "the device the run trained on", "mixcli_version": "the mixcli version that ran it",
    "started_at": "UTC time of the first start", "finished_at": "UTC time of completion",
    "batched": "whether the run trained as a member of a batched model of its configuration's seeds "
               "(train.batch_seeds; false otherwise)",
}
# provenance (mixcli.training.provenance)
_RUN_BASE.update({
    "git_commit": "HEAD of the experiment file's git repository (empty outside one)",
    "git_dirty": "whether that repository's tracked files differed from HEAD (or the file was untracked)",
    "torch_version": "the torch version", "cuda_version": "torch's CUDA version (empty for a CPU build)",
    "gpu": "the GPU's name when the run trained on CUDA",
    "plugin_versions": "JSON {package: version} of the packages whose plugins the run used",
})
for _rule in ("final", "best"):
    for _s in SPLITS:
        for _m in SCALARS:
            _RUN_BASE[f"{_rule}_{_s}_{_m}"] = f"{_m} on {_s} at the {_rule} epoch"

_EPOCH_BASE: dict[str, str] = {
    "run_id": "the run", "epoch": "epoch number (1-based)", "train_loss": "mean training loss over the epoch",
    "lr": "learning rate at the end of the epoch", "time_s": "wall time of the epoch in seconds",
}
for _s in SPLITS:
    for _m in SCALARS + LIST_METRICS:
        _EPOCH_BASE[f"{_s}_{_m}"] = f"{_m} on {_s}"

_STRINGS = {"run_id", "experiment", "method", "dataset", "model", "loss", "task", "status", "error", "config",
            "best_on", "selection", "device", "mixcli_version", "started_at", "finished_at"}
_INTS = {"seed", "epochs", "best_epoch", "epoch", "attempts", "pid", "threads"}
_STRINGS |= {"error_plugin", "host", "slurm_job", "node", "ray_node", "ray_task"}
_STRINGS |= {"git_commit", "torch_version", "cuda_version", "gpu", "plugin_versions"}
_BOOLS = {"git_dirty", "batched"}
_DEFAULTS = {"batched": False}  # the value of a row that does not have the column


def _arrow_type(col: str) -> pa.DataType:
    if col in _STRINGS:
        return pa.string()
    if col in _INTS:
        return pa.int64()
    if col in _BOOLS:
        return pa.bool_()
    if col.endswith(LIST_METRICS):
        return pa.list_(pa.float64())
    return pa.float64()


TABLES = ("runs", "epochs")


@functools.lru_cache(maxsize=None)
def columns(table: str) -> dict[str, str]:
    """The columns of ``runs`` or ``epochs`` with their meaning: the built-in ones, and one ``test_<name>``
    (``{final,best}_test_<name>`` in runs) per metric declared by an installed evaluator plugin. Computed on
    first use, so that reading results never imports the plugins (nor torch)."""
    cols = dict(_RUN_BASE if table == "runs" else _EPOCH_BASE)
    for m in evaluator_metrics():
        if table == "runs":
            for rule in ("final", "best"):
                cols[f"{rule}_test_{m}"] = f"{m} (evaluator) on test at the {rule} epoch"
        else:
            cols[f"test_{m}"] = f"{m} (evaluator) on test"
    return cols


@functools.lru_cache(maxsize=None)
def schema(table: str) -> pa.Schema:
    """The fixed Arrow schema of a table: every file of the table has exactly this schema."""
    return pa.schema([(c, _arrow_type(c)) for c in columns(table)])


def __getattr__(name: str):
    """``RUN_COLUMNS``, ``EPOCH_COLUMNS`` and ``SCHEMAS`` (documented names), computed on first access."""
    if name == "RUN_COLUMNS":
        return columns("runs")
    if name == "EPOCH_COLUMNS":
        return columns("epochs")
    if name == "SCHEMAS":
        return {t: schema(t) for t in TABLES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _column(t: pa.DataType, vals: list) -> list:
    """The values of one column coerced to its fixed Arrow type ``t`` (from :func:`_arrow_type`)."""
    if pa.types.is_string(t):
        return [None if _missing(v) else str(v) for v in vals]
    if pa.types.is_integer(t):
        return [-1 if _missing(v) else int(v) for v in vals]
    if pa.types.is_boolean(t):
        return [None if _missing(v) else bool(v) for v in vals]
    if pa.types.is_list(t):
        return [[float(x) for x in v] if v is not None else [] for v in vals]
    return [float("nan") if v is None else float(v) for v in vals]


def arrow_table(rows: list[dict], table: str) -> pa.Table:
    """``rows`` as an Arrow table with the table's fixed schema (built column by column, no pandas)."""
    sch = schema(table)
    return pa.Table.from_arrays([pa.array(_column(f.type, [r.get(f.name, _DEFAULTS.get(f.name)) for r in rows]),
                                          type=f.type)
                                 for f in sch], schema=sch)


#: how result tables are written: plain encoding, no column statistics. Dictionary pages and min/max
#: statistics only pay off for large files; a result file holds one row (runs) or one row per epoch, and
#: without them writing and reading one takes about half the time. Any parquet reader reads them alike.
WRITE_OPTIONS = {"use_dictionary": False, "write_statistics": False}


def write_parquet(arrow: pa.Table, f) -> None:
    """``arrow`` into the open file ``f`` (with :data:`WRITE_OPTIONS`)."""
    pq.write_table(arrow, f, **WRITE_OPTIONS)


def _signature(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _write_table(path: Path, rows: list[dict], table: str) -> tuple[pa.Table, tuple]:
    """Write ``rows`` as ``path``; returns the Arrow table and the written file's signature (device, inode,
    size, mtime), by which a later read knows the file is still the one written here."""
    arrow = arrow_table(rows, table)
    sig = []

    def write(f) -> None:
        write_parquet(arrow, f)
        f.flush()
        sig.append(_signature(os.fstat(f.fileno())))  # (fsync and the rename change none of these)

    atomic_write(path, write, root=path.parent.parent)
    return arrow, sig[0]


TMP_SUFFIX = fs.TMP_SUFFIX


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any], root: Path | None = None) -> None:
    """Write via a hidden temporary file in the same directory, fsync, then rename over ``path``
    (:func:`mixcli.fs.atomic_write`: with ``root``, the output folder, no link below it is followed). The
    file gets the umask's permissions. A full disk is said so (torch.save reports it obscurely)."""
    try:
        fs.atomic_write(path, write, root)
    except Exception as exc:
        if _disk_full(exc, Path(path).parent):
            raise OSError(errno.ENOSPC, "no space left on device while writing", str(path)) from None
        raise


def _disk_full(exc: Exception, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


class Store:
    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        #: run id -> (signature of the runs file this object wrote, its Arrow table[, the row as read back]):
        #: run_row of a row written here needs no parquet read while the file on disk is still that one
        self._written: dict[str, tuple] = {}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for sub in ("runs", "epochs", "jobs"):
                os.close(fs.open_dir(self.out, [sub]))  # real folders, not links planted in OUT
            probe = tempfile.NamedTemporaryFile(dir=self.out / "runs", prefix=".probe", delete=True)
            probe.close()
        except OSError as exc:
            raise MixcliError(f"output directory {self.out}: not writable ({exc.strerror or exc}); "
                              "choose another with --out or the 'out:' key") from None

    def job_dir(self, run_id: str) -> Path:
        return self.out / "jobs" / run_id

    # ------------------------------------------------------------------------------------------------ runs
    def run_row(self, run_id: str) -> dict | None:
        path = self.out / "runs" / f"{run_id}.parquet"
        try:
            st = os.stat(path)
        except OSError:
            return None
        mine = self._written.get(run_id)
        if mine is not None and mine[0] == _signature(st):  # the file this object wrote: read from memory
            if len(mine) == 2:  # (converted once, as pandas reads it back from the file)
                mine = self._written[run_id] = (*mine, mine[1].to_pandas().iloc[0].to_dict())
            return dict(mine[2])
        try:
            return pq.read_table(path).to_pandas().iloc[0].to_dict()
        except Exception:  # noqa: BLE001 - an unreadable file is treated as absent and rewritten
            return None

    def write_file(self, path: Path, data: bytes | str) -> None:
        """Any other file of the output folder (e.g. a failed run's traceback), written atomically and never
        through a link below the output folder."""
        blob = data.encode() if isinstance(data, str) else data
        atomic_write(path, lambda f: f.write(blob), root=self.out)

    def remove(self, path: Path) -> None:
        """Delete a file of the output folder (a planted link is deleted itself, not what it points to)."""
        fs.unlink(path, self.out)

    def write_run(self, row: dict) -> None:
        run_id = row["run_id"]
        self._written.pop(run_id, None)  # (a failed write leaves nothing cached)
        arrow, sig = _write_table(self.out / "runs" / f"{run_id}.parquet", [row], "runs")
        self._written[run_id] = sig, arrow

    def write_epochs(self, run_id: str, rows: list[dict]) -> None:
        _write_table(self.out / "epochs" / f"{run_id}.parquet", [{**r, "run_id": run_id} for r in rows], "epochs")

    def table_path(self, table: str, run_id: str) -> Path:
        return self.out / table / f"{run_id}.parquet"

    def damaged(self, run_id: str) -> list[Path]:
        """The result files of ``run_id`` that exist but cannot be read back (truncated, garbage), and the
        epochs file of a finished run when it is missing (deleted): the next sweep rebuilds them."""
        found = [p for p in (self.table_path(t, run_id) for t in TABLES) if p.exists() and not readable(p)]
        epochs = self.table_path("epochs", run_id)
        if not found and not epochs.exists() and (self.run_row(run_id) or {}).get("status") == "finished":
            found.append(epochs)
        return found

    def move_strays(self) -> list[str]:
        """Move what is not a mixcli result file out of ``runs/`` and ``epochs/`` (into ``stray/``), so that
        ``pandas.read_parquet(OUT / "runs")`` reads the folder; returns a line per file moved. Hidden files
        (``.`` or ``_``: temporaries) are left, as pandas skips them."""
        moved = []
        for table in TABLES:
            folder = self.out / table
            for name in sorted(fs.entries(folder, self.out)):
                if name.startswith((".", "_")):
                    continue
                path = folder / name
                why = None
                if not name.endswith(".parquet") or not path.is_file() or path.is_symlink():
                    why = "not a parquet file"
                elif readable(path):
                    try:
                        cols = pq.read_schema(path).names
                    except Exception:  # noqa: BLE001 - unreadable: left for the sweep to rebuild
                        cols = _KEY_COLUMNS[table]
                    if any(c not in cols for c in _KEY_COLUMNS[table]):
                        why = f"not a mixcli {table} file"
                if why:
                    dest = self.out / "stray" / table
                    os.close(fs.open_dir(self.out, ["stray", table]))
                    os.replace(path, dest / name)
                    moved.append(f"moved {path} to {dest} ({why}), so that pandas reads {folder}")
        return moved

    def remove_temporaries(self, run_id: str) -> int:
        """Delete the temporary files a killed writer of ``run_id`` left behind (call while holding its claim,
        so no live writer owns them). Returns how many were removed."""
        import fnmatch

        pats = [(self.out / t, f".{run_id}.parquet.*{TMP_SUFFIX}") for t in TABLES]
        pats += [(self.job_dir(run_id), f".*{TMP_SUFFIX}"), (self.out / "claims", f".{run_id}.json.*{TMP_SUFFIX}")]
        n = 0
        for d, pat in pats:  # read and deleted without following a link (mixcli.fs)
            for name in fs.entries(d, self.out):
                if fnmatch.fnmatchcase(name, pat):
                    try:
                        fs.unlink(d / name, self.out)
                        n += 1
                    except OSError:
                        pass
        return n

    def write_config(self, run_id: str, cfg: dict) -> None:
        text = config_yaml(cfg).encode()
        atomic_write(self.job_dir(run_id) / "config.yaml", lambda f: f.write(text), root=self.out)

    # ----------------------------------------------------------------------------------------- checkpoints
    def checkpoint_path(self, run_id: str) -> Path:
        return self.job_dir(run_id) / "checkpoint.pt"

    def save_checkpoint(self, run_id: str, state: dict) -> None:
        import torch

        atomic_write(self.checkpoint_path(run_id), lambda f: torch.save(state, f), root=self.out)

    def load_checkpoint(self, run_id: str) -> dict | None:
        path = self.checkpoint_path(run_id)
        if not path.exists():
            return None
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt checkpoint means starting over, not crashing
            return None


def config_yaml(cfg: dict) -> str:
    """A resolved configuration as YAML, as saved in ``jobs/<run_id>/config.yaml`` and printed by ``show``."""
    return yaml.dump(cfg, Dumper=_YAML_DUMPER, sort_keys=False)


#: libyaml's emitter when PyYAML has it (a quarter of the pure-Python one's time, the same text: both safe)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def readable(path: Path) -> bool:
    """Whether ``path`` is a complete parquet file (footer and every column chunk decode)."""
    try:
        pq.read_table(path)
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means damaged
        return False


def _warn_stderr(msg: str) -> None:
    sys.stderr.write(f"warning: {msg}\n")


_KEY_COLUMNS = {"runs": ("run_id", "status", "config"), "epochs": ("run_id", "epoch")}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls but tab and newline


def clean_text(value: Any) -> Any:
    """``value`` with terminal control characters removed when it is text (anything read from disk is shown
    on a terminal: a crafted file must not move the cursor, retitle the window or recolour the screen)."""
    return _CONTROL.sub("", value) if isinstance(value, str) else value


def _clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype):
            df[col] = df[col].map(clean_text)
    return df


def read_table(out: Path | str, table: str, warn: Callable[[str], None] = _warn_stderr) -> pd.DataFrame:
    """All rows of ``runs`` or ``epochs`` under ``out`` (empty frame if none). A damaged file is skipped
    and reported through ``warn`` (default: a line on stderr; the next ``mixcli run`` of its experiment
    rebuilds it). Text is returned without terminal control characters (:func:`clean_text`)."""
    d = Path(out) / table
    files = sorted(p for p in d.glob("*.parquet")) if d.is_dir() else []
    frames = []
    for p in files:
        try:
            frames.append(_clean_frame(pq.read_table(p).to_pandas()))
        except FileNotFoundError:
            continue  # replaced or removed between the listing and the read
        except Exception as exc:  # noqa: BLE001 - a damaged file must not take the report down
            warn(f"skipped damaged result file {p} ({type(exc).__name__}); `mixcli run` of its "
                     "experiment rebuilds it")
            continue
        missing = [c for c in _KEY_COLUMNS[table] if c not in frames[-1].columns]
        if missing:  # issue 12: a foreign parquet file (not written by mixcli) is skipped alike
            frames.pop()
            warn(f"skipped {p}: not a mixcli {table} file (no column {', '.join(missing)})")
    if not frames:
        return pd.DataFrame(columns=list(columns(table)))
    return pd.concat(frames, ignore_index=True)


def config_of(row: Any) -> dict:
    return json.loads(row["config"]) if isinstance(row["config"], str) else {}
