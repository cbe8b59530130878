"""Tabular regression data, shared by every regression dataset plugin: reading, checking, splitting, scaling.

- :func:`read_table`: a CSV / TSV / whitespace-separated text file as a table of strings (delimiter sniffed
  from the first line: tab, else comma, else semicolon, else runs of whitespace).
- :func:`numeric_columns`: columns of such a table as float64, with a :class:`~mixcli.api.PluginError` that
  names the file, the row (file line) and the column of the first empty or non-numeric cell.
- :func:`check_split` / :func:`split_rows`: a seeded shuffle split into train / val / test, given as three fractions summing to 1
  or three row counts summing to N (the C-Mixup Airfoil split is ``[1003, 300, 200]``).
- :func:`minmax`: per-feature min-max scaling to [0, 1] (constant features become 0).
- :func:`build_regression`: arrays -> :class:`~mixcli.api.DataBundle` with float32 ``x`` (N, F), float32
  ``y`` (N, D) and optional int64 ``domain`` (N,).

Scaling (``scaling``): ``minmax_train`` (default) fits min and max on the training rows only, so nothing
about validation or test inputs reaches training; ``minmax_all`` fits them on all rows, as the C-Mixup
reference code does for Airfoil (mild leakage; with 1003 of 1503 random rows in train the extremes are
almost always training rows, so the two agree there); ``none`` keeps raw features. Labels are never scaled
(C-Mixup's bandwidth ``sigma`` is in raw label units).
"""
from __future__ import annotations

import os

import numpy as np

from ..api import DataBundle, PluginError, Split

SCALINGS = ("minmax_train", "minmax_all", "none")
DELIMITERS = {"auto": None, "comma": ",", "tab": "\t", "semicolon": ";", "whitespace": r"\s+"}


def sniff_delimiter(first_line: str) -> str:
    for d in ("\t", ",", ";"):
        if d in first_line:
            return d
    return r"\s+"


def read_table(path: str, delimiter: str = "auto", header: bool = True):
    """The file at ``path`` as a pandas DataFrame of strings (column names from the header row, or 0..C-1)."""
    import pandas as pd

    if delimiter not in DELIMITERS and len(delimiter) != 1:
        raise PluginError(f"delimiter must be one of {', '.join(DELIMITERS)} or a single character, "
                          f"got {delimiter!r}")
    sep = _separator(path, delimiter)
    try:
        df = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False,
                         skipinitialspace=True, engine="python" if len(sep) > 1 else "c")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise PluginError(f"{path}: cannot parse the file as a delimited table ({exc})") from None
    if df.empty:
        raise PluginError(f"{path}: no data rows")
    if header:
        read_header(path, delimiter)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _separator(path: str, delimiter: str) -> str:
    if not os.path.isfile(path):
        raise PluginError(f"{path}: no such file")
    sep = DELIMITERS.get(delimiter, delimiter)
    if sep is None:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
        if not first:
            raise PluginError(f"{path}: the file is empty")
        sep = sniff_delimiter(first)
    return sep


def read_header(path: str, delimiter: str = "auto") -> list[str]:
    """The column names of the header row (cheap: one line is parsed). They must be unique: pandas would
    silently rename a repeated 'a' to 'a.1'."""
    import pandas as pd

    sep = _separator(path, delimiter)
    try:
        raw = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                          skipinitialspace=True, engine="python" if len(sep) > 1 else "c")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise PluginError(f"{path}: cannot parse the file as a delimited table ({exc})") from None
    names = [str(c).strip() for c in raw.iloc[0]] if len(raw) else []
    for i, n in enumerate(names):
        if n in names[:i]:
            raise PluginError(f"{path}: line 1: the column name '{n}' appears twice (columns "
                              f"{names.index(n) + 1} and {i + 1}); column names must be unique")
    return names


def numeric_columns(df, columns: list, path: str, header: bool = True, what: str = "value") -> np.ndarray:
    """``df[columns]`` as float64 (N, len(columns)); empty, NaN or non-numeric cells raise a PluginError
    naming the file line (1-based, counting the header) and the column. ``what`` names the cells ("label")."""
    import pandas as pd

    first_line = 2 if header else 1
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for k, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if len(bad):
            i = int(bad[0])
            cell = raw.iloc[i]
            missing = cell.lower() in ("", "nan", "na", "n/a", "null", "none", "?")
            kind = "is missing (NaN)" if missing else f"{cell!r} is not a finite number"
            more = f" ({len(bad)} such rows in this column)" if len(bad) > 1 else ""
            raise PluginError(f"{path}: line {i + first_line}, column '{col}': the {what} {kind}{more}")
        out[:, k] = vals
    return out


def check_split(split) -> list:
    """``split`` as a list after checking its form: three row counts (ints >= 0) or three fractions >= 0
    summing to 1."""
    if not (isinstance(split, (list, tuple)) and len(split) == 3):
        raise PluginError(f"split must be [train, val, test] (fractions summing to 1 or row counts summing "
                          f"to the number of rows), got {split!r}")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in split):
        raise PluginError(f"split must hold three numbers, got {split!r}")
    if min(split) < 0:
        raise PluginError(f"split {list(split)}: sizes must be >= 0")
    counts = all(isinstance(s, int) for s in split)
    if not counts and abs(sum(split) - 1) > 1e-6:
        raise PluginError(f"split {list(split)}: fractions must sum to 1 (or give three integer row counts)")
    return list(split)


def split_rows(n: int, split, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded shuffle split of ``n`` rows: ``split`` = [train, val, test] as fractions (sum 1) or row counts
    (sum n). The rows are permuted once (``rng.permutation``: a numpy Generator, or the ``numpy.random``
    module for the global generator) and cut in that order (train first), as the C-Mixup reference does."""
    split = check_split(split)
    if all(isinstance(s, int) for s in split):
        counts = split
        if sum(counts) != n:
            raise PluginError(f"split {counts}: row counts must sum to the number of rows ({n})")
    else:
        n_val, n_test = int(round(split[1] * n)), int(round(split[2] * n))
        counts = [n - n_val - n_test, n_val, n_test]
    if counts[0] < 1 or (split[2] > 0 and counts[2] < 1):
        raise PluginError(f"split {split} of {n} rows leaves an empty training or test set")
    perm = rng.permutation(n)
    a, b = counts[0], counts[0] + counts[1]
    return perm[:a], perm[a:b], perm[b:]


def minmax(x: np.ndarray, fit_rows: np.ndarray | None = None) -> np.ndarray:
    """``(x - min) / (max - min)`` per column, min and max over ``fit_rows`` (all rows if None); a constant
    column maps to 0."""
    ref = x if fit_rows is None else x[fit_rows]
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (x - lo) / span


def build_regression(x, y, *, split, split_seed: int = 0, scaling: str = "minmax_train",
                     domain=None, split_per_seed: bool = False) -> DataBundle:
    """Arrays (x: (N, F), y: (N,) or (N, D), domain: (N,) ints or None) -> a seeded, scaled DataBundle.

    By default the split depends only on ``split_seed`` (``numpy.random.default_rng(split_seed)``; the same
    for every run seed, so methods and seeds are compared on identical data). ``split_per_seed`` instead
    draws the shuffle from numpy's global generator, which the engine seeds with the run seed just before it
    loads the dataset: each run seed ``s`` then gets its own split, ``np.random.seed(s);
    np.random.permutation(N)``, exactly the C-Mixup reference's protocol (its three seeds are three splits).
    A zero-size validation split gives ``val=None``.
    """
    import torch

    if scaling not in SCALINGS:
        raise PluginError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64)
    y = y.reshape(len(y), -1)
    if len(x) != len(y):
        raise PluginError(f"features have {len(x)} rows but labels {len(y)}")
    rng = np.random if split_per_seed else np.random.default_rng(split_seed)
    train, val, test = split_rows(len(y), split, rng)
    if scaling != "none":
        x = minmax(x, train if scaling == "minmax_train" else None)
    dom = None if domain is None else torch.as_tensor(np.asarray(domain, dtype=np.int64))

    def part(rows):
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        return Split(torch.as_tensor(x[rows], dtype=torch.float32), torch.as_tensor(y[rows], dtype=torch.float32),
                     None if dom is None else dom[rows_t])

    return DataBundle(task="regression", train=part(train), val=part(val) if len(val) else None, test=part(test))
