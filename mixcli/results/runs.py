"""Reading what runs left behind: the runs table with each run's configuration flattened into columns,
the keys that vary between runs, and the groups they make (as ``compare``, ``curves``, ``reliability``
and ``export`` group runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import MixcliError
from .store import read_table

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


def _config(text, run_id, out: Path) -> dict:
    """A runs row's resolved configuration (JSON); a damaged one is a one-line error naming the run."""
    if not isinstance(text, str):
        return {}
    try:
        cfg = json.loads(text)
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        raise MixcliError(f"{out / 'runs' / f'{run_id}.parquet'}: its 'config' column is not a JSON mapping; "
                          "the file is damaged (delete it and the run is redone)")
    return cfg


def load_runs(out: Path | str) -> pd.DataFrame:
    """Finished runs under ``out`` with their flattened configuration as extra columns."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise MixcliError(f"{out}: no results here (expected {out / 'runs'}); run an experiment first or "
                          "pass the directory given by its 'out:' key")
    runs = read_table(out, "runs")
    if runs.empty:
        raise MixcliError(f"{out}: no runs recorded yet")
    flat = pd.DataFrame([flatten(_config(c, r, out)) for c, r in zip(runs["config"], runs["run_id"])])
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
    runs = pd.concat([load_runs(o) for o in outs], ignore_index=True)
    epochs = pd.concat([read_table(o, "epochs") for o in outs], ignore_index=True)
    dup = runs["run_id"].duplicated()
    if dup.any():
        notes.append(f"{int(dup.sum())} run(s) found in more than one directory counted once")
        runs = runs[~dup].reset_index(drop=True)
        epochs = epochs.drop_duplicates(["run_id", "epoch"])
    return runs, epochs
