"""Results -> reports: the comparison table of ``mixcli compare`` (and the end of ``mixcli run``).

One row per group (default: the method, plus every configuration key that varies between the runs, plus the
experiment when the directory holds several), the mean +- standard deviation over seeds (sample std, ddof=1;
none for a single run, shown as the bare value next to ``n`` = 1) and the number of runs, with the best mean
of each column marked. Every number comes from one epoch-selection rule (:mod:`mixcli.results.selection`), named in
the title. When a group holds runs that differ in more than the seed (e.g. ``--by method`` over several data
fractions), the title says "pooled over seeds and <keys>" instead of "over seeds". Two experiments are never
averaged as if they were seeds of one: ``experiment`` is always a grouping key when there are several.

``against=BASELINE`` adds, per group and metric, the paired statistics of :mod:`mixcli.results.stats` against the
baseline group (the difference paired by seed, its standard error and confidence interval, wins/ties/losses,
paired t-test and Wilcoxon signed-rank, Welch when the seeds do not match, Holm-adjusted p-values, the
bootstrap interval, the probability of beating the baseline on a seed and the seeds 80% power needs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config.schema import RULES
from ..errors import MixcliError, did_you_mean
from ..metrics import METRICS, all_metrics, known_metric, metric_info
from .runs import group_keys, group_label, read_all, varying_keys
from .selection import select
from .stats import PairedRow, against_baseline

DEFAULT_METRICS = {
    "classification": ["accuracy", "nll", "ece", "worst_class_recall", "mean_recall"],
    "regression": ["rmse", "mape", "pearson_r", "worst_domain_rmse"],
}


@dataclass
class Comparison:
    table: pd.DataFrame      # one row per group: keys, n, <metric>_mean, <metric>_std
    by: list[str]
    metrics: list[str]
    title: str
    rule_label: str
    best: dict[str, list]    # metric -> the best rows' indices (one per block of ``within``, else one)
    notes: list[str]
    within: str | None = None  # the key whose values split the table into blocks (best marked per block)
    values: pd.DataFrame | None = None  # one row per run: the grouping and pairing keys and each metric
    pair_on: list[str] | None = None    # the pairing key of runs within a group: the seed plus pooled keys
    against: str | None = None
    alpha: float = 0.05
    paired: list[PairedRow] | None = None  # the statistics against the baseline (when ``against`` is set)

    def is_best(self, m: str, i: int) -> bool:
        return i in self.best.get(m, ())


def compare(out: Path | str | list, by: list[str] | None = None, metrics: list[str] | None = None,
            rule: str | None = None, split: str = "test", run_ids: list[str] | None = None,
            within: str | None = None, against: str | None = None, alpha: float = 0.05) -> Comparison:
    """Compare the runs under ``out`` (one output directory or a list of them). ``within``: a grouping key
    whose values split the table into blocks; the best of each column is then marked within each block.
    ``against``: a baseline group; each group's difference to it, paired by seed (:mod:`mixcli.results.stats`)."""
    if rule is not None and rule not in RULES:
        raise MixcliError(f"--select {rule}: expected one of {', '.join(RULES)}")
    outs = [Path(o) for o in out] if isinstance(out, (list, tuple)) else [Path(out)]
    where = ", ".join(map(str, outs))
    notes: list[str] = []
    runs, epochs = read_all(outs, notes)
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)].reset_index(drop=True)
    unfinished = runs[runs["status"] != "finished"]
    if len(unfinished):
        counts = unfinished["status"].value_counts().to_dict()
        notes.append("not included: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " run(s)")
    runs = runs[runs["status"] == "finished"].reset_index(drop=True)
    if runs.empty:
        raise MixcliError(f"{where}: no finished runs yet ({', '.join(notes)})")
    tasks = runs["task"].unique().tolist()
    if len(tasks) > 1:
        raise MixcliError(f"{where}: mixes {' and '.join(tasks)} runs; compare them from separate directories")
    task = tasks[0]
    if rule is None:
        rules = runs["selection"].dropna().unique().tolist()
        if len(rules) > 1:
            raise MixcliError(f"{where}: these runs ask for different selection rules ({', '.join(rules)}); "
                              "pass --select final|best|median_last10")
        rule = rules[0] if rules else "final"
    default_keys = varying_keys(runs)
    by = list(by) if by else list(default_keys)
    if runs["experiment"].nunique() > 1:
        default_keys.append("experiment")
        if "experiment" not in by:  # never average two experiments as if they were seeds of one
            by.insert(1 if by[:1] == ["method"] else 0, "experiment")
    if within is not None and within not in by:
        by.append(within)
    for key in by:
        if key not in runs.columns:
            known = [c for c in runs.columns if c in ("method", "dataset", "model", "loss", "seed", "experiment")
                     or "." in c]
            opt = "--within" if key == within else "--by"
            raise MixcliError(f"{opt} {key}: no such column or configuration key{did_you_mean(key, known)}")
    if within is not None and len(by) < 2:
        raise MixcliError(f"--within {within}: it is the only grouping key, so every block would hold one "
                          "row; add --by KEY for the rows compared inside each block")
    if metrics:
        for m in metrics:
            if not known_metric(m):
                raise MixcliError(f"--metric {m}: unknown metric{did_you_mean(m, all_metrics())}")
    else:
        metrics = DEFAULT_METRICS[task]
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
    gk = group_keys(runs, by)
    others = [k for k in default_keys if k not in by]
    ok = group_keys(runs, others) if others else pd.DataFrame(index=runs.index)
    pooled = [k for k in others if pd.concat([gk, ok[k]], axis=1).groupby(by, dropna=False)[k].nunique().max() > 1]
    data = pd.concat([gk, vals[metrics]], axis=1)
    grouped = data.groupby(by, sort=False, dropna=False)
    table = grouped.size().rename("n").reset_index()
    for m in metrics:
        table[f"{m}_mean"] = grouped[m].mean().to_numpy()
        table[f"{m}_std"] = grouped[m].std(ddof=1).to_numpy()  # NaN for a single run
    if within is not None:  # blocks contiguous, in order of first appearance
        order = {v: k for k, v in enumerate(dict.fromkeys(table[within]))}
        table = table.sort_values(within, key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    blocks = [table.index] if within is None else [g.index for _, g in table.groupby(within, sort=False)]
    best: dict[str, list] = {}
    for m in metrics:
        for idx in blocks:
            col = table.loc[idx, f"{m}_mean"]
            if col.notna().any():
                best.setdefault(m, []).append(col.idxmax() if metric_info(m).higher_is_better else col.idxmin())
    names = ", ".join(dict.fromkeys(runs["experiment"].astype(str)))
    over = "over seeds" if not pooled else "pooled over seeds and " + ", ".join(pooled)
    title = f"{names}: {split} metrics at the {label}, mean ± std {over}"
    pair_on = ["seed", *pooled]
    values = pd.concat([gk, ok[pooled], runs[["seed"]], vals[metrics]], axis=1)
    c = Comparison(table, by, metrics, title, label, best, notes, within=within, values=values, pair_on=pair_on,
                   against=against, alpha=alpha)
    if against is not None:
        labels = {tuple(r[k] for k in by): group_label({k: r[k] for k in by}) for _, r in table.iterrows()}
        c.paired = against_baseline(values, by, pair_on, metrics, labels, against, alpha)
    return c
