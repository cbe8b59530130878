"""Reading what runs left behind: the runs table with each run's configuration flattened into columns,
the keys that vary between runs, and the groups they make (as ``compare``, ``curves``, ``reliability``
and ``export`` group runs)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..config.schema import RULES, TASKS
from ..errors import MixcliError
from .store import _EPOCH_BASE, _KEY_COLUMNS, _RUN_BASE, _arrow_type

IGNORED_KEYS = {"seed", "name"}
UNSET = ("-", "None", "nan", "NaN", "")  # how an option a run does not have reads after grouping
IGNORED_COLUMNS = {"init_from.parent", "init_from.checkpoint",  # per-seed parent runs, not a setting
                   "checkpoint.keep", "train.log_steps"}  # what a run keeps, not how it trains


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def load_runs(out: Path | str, warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Runs under ``out`` with their flattened configuration as extra columns (files mixcli did not write
    skipped with a warning, :func:`read_results`)."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise MixcliError(f"{clean_line(out)}: no results here (expected {clean_line(out / 'runs')}); run an "
                          "experiment first or pass the directory given by its 'out:' key")
    skipped: list[str] = []

    def note(msg: str) -> None:
        skipped.append(msg)
        (warn or stderr_warning)(msg)

    runs = read_results(out, "runs", note)
    if runs.empty:
        why = f" ({len(skipped)} file(s) skipped: {clean_line(skipped[0], 300)})" if skipped else ""
        raise MixcliError(f"{clean_line(out)}: no runs recorded yet{why}")
    flat = pd.DataFrame([flatten(parse_config(c)[0] or {}) for c in runs["config"]])
    flat = flat.drop(columns=[c for c in flat.columns if c in runs.columns], errors="ignore")
    return pd.concat([runs.reset_index(drop=True), flat], axis=1)


def varying_keys(runs: pd.DataFrame) -> list[str]:
    """``method`` plus the configuration keys whose value differs between runs (a plugin's options: between
    runs of the same plugin)."""
    keys = ["method"]
    cfg_cols = [c for c in runs.columns if "." in c and c.split(".")[-1] not in IGNORED_KEYS
                and c not in IGNORED_COLUMNS]
    for col in cfg_cols:
        kind = col.split(".")[0]
        if kind in ("method", "loss", "dataset", "model"):  # options of one plugin: compared within its runs
            differs = any(g[col].astype(str).nunique(dropna=False) > 1 for _, g in runs.groupby(kind))
        else:
            differs = runs[col].astype(str).nunique(dropna=False) > 1
        if differs and not col.endswith(".name"):
            keys.append(col)
    for col in ("dataset", "model", "loss"):
        if runs[col].nunique() > 1:
            keys.append(col)
    return keys


def group_keys(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The grouping columns as text, ``-`` where a run does not have the option (so it is not dropped)."""
    keys = runs[by].astype(object)
    return keys.where(keys.notna(), "-").astype(str)


def group_label(keys: dict[str, str]) -> str:
    """A group's label: the method first, then ``option=value`` for the other keys that are set (short
    option names where they are unambiguous), e.g. ``mixup fraction=0.1 off_after_epoch=150``."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    bits = []
    for (k, v), s in zip(keys.items(), short):
        if v in UNSET:
            continue
        if v.endswith(".0") and v[:-2].lstrip("-").isdigit() and abs(int(v[:-2])) >= 2:
            v = v[:-2]  # 150.0 -> 150 (ints read back as floats next to unset values); 1.0 stays
        if k == "method":
            bits.insert(0, v)
        else:
            bits.append(f"{s if short.count(s) == 1 else k}={v}")
    return " ".join(bits) or "all runs"


def read_all(outs: list[Path], notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs (with flattened configs) and epochs of several output directories; a run id found in more
    than one directory is counted once (the first directory's)."""
    loaded, problems = [], []
    for o in outs:
        try:
            loaded.append((o, load_runs(o)))
        except MixcliError as exc:  # with several directories, one without usable runs is a warning
            if len(outs) == 1 or not Path(o).is_dir():  # (a path that is not there is a typo: an error)
                raise
            problems.append(exc)
            stderr_warning(f"left out {clean_line(o)}: no usable runs there")
    if not loaded:
        raise problems[0]
    runs = pd.concat([r for _, r in loaded], ignore_index=True)
    epochs = pd.concat([read_results(o, "epochs") for o, _ in loaded], ignore_index=True)
    dup = runs["run_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} run(s) found in more than one directory counted once")
        runs = runs[~dup].reset_index(drop=True)
        epochs = epochs.drop_duplicates(["run_id", "epoch"])
    return runs, epochs


# ------------------------------------------------------------------------------ reading crafted files safely
# Every reader of result files (compare, curves, reliability, export, inspect) goes through the functions
# below: a file that is not what mixcli writes (not parquet, another schema, a column of another type, a row
# naming another run, a configuration that is not a small JSON mapping, a value out of range) is skipped with
# one warning line naming it, and the rest is shown. Text read from disk is returned without terminal
# control characters.
STATUSES = ("running", "finished", "failed", "interrupted")
MAX_FILE_BYTES = 256 * 2**20       # one runs or epochs file (mixcli's are a few kB)
MAX_UNCOMPRESSED = 512 * 2**20     # its decoded size (a small file can claim a huge one)
MAX_ROWS = {"runs": 1_000, "epochs": 1_000_000}
MAX_CONFIG_CHARS = 1_000_000       # a run's resolved configuration as JSON (mixcli's: about 2 kB)
MAX_CONFIG_DEPTH = 32              # its nesting (mixcli's: 4 levels)
MAX_SIDE_BYTES = 64 * 2**20        # a run's side file (calibration.json, steps.parquet)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")  # controls, bidi, breaks
_session: ContextVar[set | None] = ContextVar("mixcli_results_warned", default=None)


def clean_line(text: Any, limit: int = 400) -> str:
    """``text`` as one line of plain text: control characters (newlines, escape sequences, bidirectional
    overrides) removed, and cut at ``limit`` characters."""
    s = _UNSAFE.sub("", str(text))
    return s if len(s) <= limit else s[:limit - 1] + "…"


def clean_value(value: Any) -> Any:
    """A value read from disk, text without control characters (lists and mappings walked)."""
    if isinstance(value, str):
        return _UNSAFE.sub("", value)
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    return value


def stderr_warning(msg: str) -> None:
    """The default ``warn``: one ``warning:`` line on stderr; within :func:`reading`, each line once."""
    line = clean_line(msg, 600)
    seen = _session.get()
    if seen is not None:
        if line in seen:
            return
        seen.add(line)
    sys.stderr.write(f"warning: {line}\n")


@contextlib.contextmanager
def reading():
    """One command's reading of results: a file skipped by several of its steps is reported once."""
    token = _session.set(set())
    try:
        yield
    finally:
        _session.reset(token)


def _depth(obj: Any) -> int:
    """The nesting depth of a JSON value (no recursion: the value may come from a crafted file)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_CONFIG_DEPTH:
                return d
            todo.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def parse_config(text: Any) -> tuple[dict | None, str | None]:
    """A runs row's ``config`` (JSON text) as a mapping, or (None, why not). A missing one is ``{}``."""
    if text is None or (isinstance(text, float) and text != text):
        return {}, None
    if not isinstance(text, str):
        return None, f"its 'config' column holds {type(text).__name__} values, expected JSON text"
    if len(text) > MAX_CONFIG_CHARS:
        return None, f"its 'config' column holds {len(text)} characters (at most {MAX_CONFIG_CHARS})"
    try:
        cfg = json.loads(text)
    except RecursionError:
        return None, f"its 'config' column is not a JSON mapping (nested deeper than {MAX_CONFIG_DEPTH} levels)"
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        return None, "its 'config' column is not a JSON mapping"
    if _depth(cfg) > MAX_CONFIG_DEPTH:
        return None, f"its 'config' column is not a JSON mapping (nested deeper than {MAX_CONFIG_DEPTH} levels)"
    return clean_value(cfg), None


def safe_run_id(rid: Any) -> bool:
    """Whether ``rid`` can be a mixcli run id: text that names one entry of ``OUT/jobs`` (no separator, no
    leading dot, no control character)."""
    return (isinstance(rid, str) and 0 < len(rid) <= 255 and "/" not in rid and "\\" not in rid
            and not rid.startswith(".") and not _UNSAFE.search(rid))


def read_side_file(path: Path, limit: int = MAX_SIDE_BYTES) -> bytes:
    """The bytes of a run's side file, refusing what a crafted folder could put there instead: a pipe or a
    device (which would block or never end), or a file larger than ``limit``. Raises OSError/ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, at most {limit}")
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        if size > limit:
            raise ValueError(f"more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


_METRIC_PREFIXES = ("train_", "val_", "test_", "final_", "best_")


def expected_type(table: str, name: str) -> pa.DataType | None:
    """The Arrow type mixcli writes for column ``name`` of ``table`` (its built-in columns and every
    metric column), or None for a column it does not know. Told from the name alone: reading results never
    imports the evaluator plugins (nor torch) to list their metrics."""
    base = _RUN_BASE if table == "runs" else _EPOCH_BASE
    if name in base or name.startswith(_METRIC_PREFIXES):
        return _arrow_type(name)
    return None


def _type_ok(want: pa.DataType, got: pa.DataType) -> bool:
    if pa.types.is_null(got) or got == want:
        return True
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    if pa.types.is_integer(want):
        return pa.types.is_integer(got) or pa.types.is_floating(got)  # integral floats: checked below
    if pa.types.is_floating(want):
        return pa.types.is_integer(got) or pa.types.is_floating(got)
    if pa.types.is_boolean(want):
        return pa.types.is_boolean(got)
    if pa.types.is_list(want):
        return ((pa.types.is_list(got) or pa.types.is_large_list(got))
                and (pa.types.is_floating(got.value_type) or pa.types.is_integer(got.value_type)
                     or pa.types.is_null(got.value_type)))
    return False


def _kind(t: pa.DataType) -> str:
    """A column type in a few words."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_integer(t):
        return "integers"
    if pa.types.is_floating(t):
        return "numbers"
    if pa.types.is_boolean(t):
        return "true/false"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _kind(t.value_type)
        return f"lists of {inner}" if " " not in inner else "nested lists"
    return "other values"


def _plain(t: pa.DataType) -> bool:
    """A column type the reports can hold (an unknown column of another type is left out)."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_boolean(t) or pa.types.is_null(t))


def _decode(path: Path, table: str) -> pa.Table:
    """A results file as an Arrow table within the size limits (ValueError says why not)."""
    data = read_side_file(path, MAX_FILE_BYTES)
    pf = pq.ParquetFile(pa.BufferReader(data))
    md = pf.metadata
    if md.num_rows > MAX_ROWS[table]:
        raise ValueError(f"{md.num_rows} rows, a mixcli {table} file has at most {MAX_ROWS[table]}")
    size = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    if size > MAX_UNCOMPRESSED:
        raise ValueError(f"{size} bytes once decoded, at most {MAX_UNCOMPRESSED}")
    return pf.read()


_INT_LOW = {"epoch": 0}  # the smallest valid value of an integer column (others: -1, which stands for "none")


def _check_frame(df: pd.DataFrame, table: str, stem: str) -> str | None:
    """Why the rows of ``OUT/<table>/<stem>.parquet`` are not what mixcli writes, or None."""
    for name in df.columns:
        want = expected_type(table, name)
        if want is not None and pa.types.is_integer(want):
            col = pd.to_numeric(df[name], errors="coerce")
            if table == "epochs" and name == "epoch" and col.isna().any():
                return "its 'epoch' column has missing values"
            col = col.fillna(-1)
            if not (col == col.round()).all():
                return f"its '{name}' column holds non-integer values"
            low = _INT_LOW.get(name, -1)
            if (col < low).any():
                return f"its '{name}' column holds {int(col.min())}, expected an integer >= {low}"
            df[name] = col.astype("int64")
    bad = [r for r in df["run_id"] if r != stem]
    if bad:
        return f"a row names run {clean_line(bad[0], 40)!r}, not the file's {stem}"
    if table == "runs":
        for col, allowed in (("status", STATUSES), ("task", TASKS), ("selection", RULES)):
            if col not in df.columns:
                continue
            vals = [v for v in df[col] if not (v is None or (isinstance(v, float) and v != v))]
            if col != "selection" and len(vals) < len(df):
                return f"its '{col}' column has missing values"
            odd = [v for v in vals if v not in allowed]
            if odd:
                return f"its '{col}' column holds {clean_line(odd[0], 60)!r}, expected one of {', '.join(allowed)}"
        for col in ("experiment", "method"):
            if col in df.columns and not all(isinstance(v, str) and v for v in df[col]):
                return f"its '{col}' column has missing values"
        for text in df["config"]:
            _, why = parse_config(text)
            if why:
                return why
    return None


def read_results(out: Path | str, table: str, warn: Callable[[str], None] = stderr_warning) -> pd.DataFrame:
    """All rows of ``runs`` or ``epochs`` under ``out`` that mixcli could have written (empty frame if
    none). Any other file is skipped with one ``warn`` line naming it and why (the next ``mixcli run`` of its
    experiment rebuilds a damaged one). Text comes back without terminal control characters."""
    d = Path(out) / table
    try:
        names = sorted(e.name for e in os.scandir(d) if e.name.endswith(".parquet") and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except OSError as exc:
        raise MixcliError(f"{clean_line(d)}: cannot list the folder ({exc.strerror or exc})") from None
    frames = []
    for name in names:
        p, stem = d / name, name[:-len(".parquet")]
        where = clean_line(p)
        try:
            t = _decode(p, table)
        except FileNotFoundError:
            continue  # replaced or removed between the listing and the read
        except Exception as exc:  # noqa: BLE001 - whatever the bytes, the report goes on
            why = str(exc) if type(exc) is ValueError and str(exc) else type(exc).__name__
            warn(f"skipped damaged result file {where} ({clean_line(why, 100)}); `mixcli run` of its experiment "
                 "rebuilds it")
            continue
        missing = [c for c in _KEY_COLUMNS[table] if c not in t.column_names]
        if missing:  # issue 12: a foreign parquet file (not written by mixcli) is skipped alike
            warn(f"skipped {where}: not a mixcli {table} file (no column {', '.join(missing)})")
            continue
        if len(set(t.column_names)) < len(t.column_names):
            warn(f"skipped {where}: not a mixcli {table} file (a column name repeats)")
            continue
        wrong = [(n, t.schema.field(n).type, expected_type(table, n)) for n in t.column_names
                 if expected_type(table, n) is not None
                 and not _type_ok(expected_type(table, n), t.schema.field(n).type)]
        if wrong:
            n, got, want = wrong[0]
            warn(f"skipped {where}: its '{clean_line(n, 40)}' column holds {_kind(got)}, expected {_kind(want)}")
            continue
        keep = [n for n in t.column_names if expected_type(table, n) is not None or _plain(t.schema.field(n).type)]
        try:
            df = t.select(keep).to_pandas()
        except Exception as exc:  # noqa: BLE001
            warn(f"skipped damaged result file {where} ({type(exc).__name__})")
            continue
        df.columns = [clean_line(c, 200) for c in df.columns]
        if df.columns.duplicated().any():
            warn(f"skipped {where}: not a mixcli {table} file (a column name repeats)")
            continue
        why = _check_frame(df, table, stem)
        if why:
            warn(f"skipped {where}: {why}")
            continue
        for col in df.columns:
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype):
                df[col] = df[col].map(lambda v: _UNSAFE.sub("", v) if isinstance(v, str) else v)
        frames.append(df)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(_RUN_BASE if table == "runs" else _EPOCH_BASE))
    return pd.concat(frames, ignore_index=True)
