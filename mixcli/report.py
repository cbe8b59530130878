"""Results -> reports: the comparison table of ``mixcli compare`` (and the end of ``mixcli run``).

One row per group (default: the method, plus every configuration key that varies between the runs), the
mean +- standard deviation over seeds (sample std, ddof=1; 0 for a single run) and the number of runs, with
the best mean of each column marked. Every number comes from one epoch-selection rule
(:mod:`mixcli.selection`), named in the title.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import MixcliError, did_you_mean
from .evaluate import all_metrics
from .metrics import METRICS
from .selection import RULES, select
from .store import read_table

DEFAULT_METRICS = {
    "classification": ["accuracy", "nll", "ece", "worst_class_recall", "mean_recall"],
    "regression": ["rmse", "mape", "pearson_r", "worst_domain_rmse"],
}
IGNORED_KEYS = {"seed", "name"}
UNSET = ("-", "None", "nan", "NaN", "")  # how an option a run does not have reads after grouping
IGNORED_COLUMNS = {"init_from.parent", "init_from.checkpoint"}  # per-seed parent runs, not a setting


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



@dataclass
class Comparison:
    table: pd.DataFrame      # one row per group: keys, n, <metric>_mean, <metric>_std
    by: list[str]
    metrics: list[str]
    title: str
    rule_label: str
    best: dict[str, object]  # metric -> index of the best row
    notes: list[str]


def compare(out: Path | str, by: list[str] | None = None, metrics: list[str] | None = None,
            rule: str | None = None, split: str = "test", run_ids: list[str] | None = None) -> Comparison:
    if rule is not None and rule not in RULES:
        raise MixcliError(f"--select {rule}: expected one of {', '.join(RULES)}")
    runs = load_runs(out)
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)].reset_index(drop=True)
    notes = []
    unfinished = runs[runs["status"] != "finished"]
    if len(unfinished):
        counts = unfinished["status"].value_counts().to_dict()
        notes.append("not included: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " run(s)")
    runs = runs[runs["status"] == "finished"].reset_index(drop=True)
    if runs.empty:
        raise MixcliError(f"{out}: no finished runs yet ({', '.join(notes)})")
    tasks = runs["task"].unique().tolist()
    if len(tasks) > 1:
        raise MixcliError(f"{out}: mixes {' and '.join(tasks)} runs; compare them from separate directories")
    task = tasks[0]
    if rule is None:
        rules = runs["selection"].dropna().unique().tolist()
        if len(rules) > 1:
            raise MixcliError(f"{out}: these runs ask for different selection rules ({', '.join(rules)}); "
                              "pass --select final|best|median_last10")
        rule = rules[0] if rules else "final"
    by = list(by) if by else varying_keys(runs)
    for key in by:
        if key not in runs.columns:
            known = [c for c in runs.columns if c in ("method", "dataset", "model", "loss", "seed", "experiment")
                     or "." in c]
            raise MixcliError(f"--by {key}: no such column or configuration key{did_you_mean(key, known)}")
    if metrics:
        for m in metrics:
            if m not in all_metrics():
                raise MixcliError(f"--metric {m}: unknown metric{did_you_mean(m, all_metrics())}")
    else:
        metrics = DEFAULT_METRICS[task]
    epochs = read_table(out, "epochs")
    label = rule
    values = []
    for _, r in runs.iterrows():
        sel, label = select(epochs[epochs["run_id"] == r["run_id"]], rule, task)
        values.append({m: sel.get(f"{split}_{m}", float("nan")) for m in metrics})
    vals = pd.DataFrame(values)
    missing = [m for m in metrics if not vals[m].notna().any() and m not in METRICS]  # evaluator metrics
    if missing:
        notes.append(f"{', '.join(missing)}: not recorded on {split} at the selected epochs (evaluators run on "
                     "test, after the final epoch unless eval.extra_every is set)")
    metrics = [m for m in metrics if vals[m].notna().any()]
    if not metrics:
        raise MixcliError(f"no {split} metrics recorded for these runs" + (f" ({notes[-1]})" if missing else
                                                                             " (try --split test)"))
    data = pd.concat([group_keys(runs, by), vals[metrics]], axis=1)
    grouped = data.groupby(by, sort=False, dropna=False)
    table = grouped.size().rename("n").reset_index()
    for m in metrics:
        table[f"{m}_mean"] = grouped[m].mean().to_numpy()
        table[f"{m}_std"] = grouped[m].std(ddof=1).fillna(0.0).to_numpy()
    best = {}
    for m in metrics:
        col = table[f"{m}_mean"]
        if col.notna().any():
            best[m] = col.idxmax() if all_metrics()[m].higher_is_better else col.idxmin()
    title = f"{runs['experiment'].iloc[0]}: {split} metrics at the {label}, mean ± std over seeds"
    return Comparison(table, by, metrics, title, label, best, notes)


def fmt_value(metric: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    info = all_metrics()[metric]
    return f"{v * 100:.2f}" if info.percent else f"{v:.4f}"


def header(metric: str) -> str:
    info = all_metrics()[metric]
    arrow = "↑" if info.higher_is_better else "↓"
    return f"{metric}{' %' if info.percent else ''} {arrow}"


def cells(c: Comparison, i: int, m: str) -> str:
    row = c.table.iloc[i]
    return f"{fmt_value(m, row[f'{m}_mean'])} ± {fmt_value(m, row[f'{m}_std'])}"


def render(c: Comparison, fmt: str = "table"):
    """A rich Table (``table``) or a string (``markdown``, ``csv``, ``json``)."""
    if fmt == "json":
        rows = []
        for i in range(len(c.table)):
            row = {k: c.table.iloc[i][k] for k in c.by}
            row["n"] = int(c.table.iloc[i]["n"])
            for m in c.metrics:
                row[m] = {"mean": _num(c.table.iloc[i][f"{m}_mean"]), "std": _num(c.table.iloc[i][f"{m}_std"]),
                          "best": c.best.get(m) == i}
            rows.append(row)
        return json.dumps({"title": c.title, "selection": c.rule_label, "by": c.by, "metrics": c.metrics,
                           "groups": rows, "notes": c.notes}, indent=2)
    if fmt == "csv":
        return c.table.to_csv(index=False)
    if fmt == "markdown":
        head = [*c.by, "n", *(header(m) for m in c.metrics)]
        lines = [f"**{c.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i in range(len(c.table)):
            vals = [str(c.table.iloc[i][k]) for k in c.by] + [str(int(c.table.iloc[i]["n"]))]
            vals += [f"**{cells(c, i, m)}**" if c.best.get(m) == i else cells(c, i, m) for m in c.metrics]
            lines.append("| " + " | ".join(vals) + " |")
        lines += [f"_{n}_" for n in c.notes]
        return "\n".join(lines)
    from rich.table import Table

    t = Table(title=c.title, caption="best mean per column in bold green" + (
        "; " + "; ".join(c.notes) if c.notes else ""))
    # one column per grouping key when there are few; else one "group" column of key=value labels (narrow
    # terminals keep the numbers readable)
    merged = len(c.by) > 2
    for k in (["group"] if merged else c.by):
        t.add_column(k, style="cyan", overflow="fold")
    t.add_column("n", justify="right")
    for m in c.metrics:
        t.add_column(header(m), justify="right")
    for i in range(len(c.table)):
        keys = [str(c.table.iloc[i][k]) for k in c.by]
        if merged:
            keys = [group_label(dict(zip(c.by, keys)))]
        vals = keys + [str(int(c.table.iloc[i]["n"]))]
        vals += [f"[bold green]{cells(c, i, m)}[/]" if c.best.get(m) == i else cells(c, i, m) for m in c.metrics]
        t.add_row(*vals)
    return t


def _num(v):
    v = float(v)
    return None if math.isnan(v) else v
