"""Results -> reports: the comparison table of ``mixcli compare`` (and the end of ``mixcli run``).

One row per group (default: the method, plus every configuration key that varies between the runs, plus the
experiment when the directory holds several), the mean +- standard deviation over seeds (sample std, ddof=1;
none for a single run, shown as the bare value next to ``n`` = 1) and the number of runs, with the best mean
of each column marked. Every number comes from one epoch-selection rule (:mod:`mixcli.selection`), named in
the title. When a group holds runs that differ in more than the seed (e.g. ``--by method`` over several data
fractions), the title says "pooled over seeds and <keys>" instead of "over seeds". Two experiments are never
averaged as if they were seeds of one: ``experiment`` is always a grouping key when there are several.

``against=BASELINE`` adds, per group and metric, the paired statistics of :mod:`mixcli.stats` against the
baseline group (the difference paired by seed, its standard error and confidence interval, wins/ties/losses,
paired t-test and Wilcoxon signed-rank, Welch when the seeds do not match, Holm-adjusted p-values, the
bootstrap interval, the probability of beating the baseline on a seed and the seeds 80% power needs).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import MixcliError, did_you_mean
from .metrics import METRICS, all_metrics, known_metric, metric_info
from .selection import RULES, select
from .stats import MAX_SEEDS, PairedRow, against_baseline
from .store import read_table

DEFAULT_METRICS = {
    "classification": ["accuracy", "nll", "ece", "worst_class_recall", "mean_recall"],
    "regression": ["rmse", "mape", "pearson_r", "worst_domain_rmse"],
}
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


def _read_all(outs: list[Path], notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def compare(out: Path | str | list, by: list[str] | None = None, metrics: list[str] | None = None,
            rule: str | None = None, split: str = "test", run_ids: list[str] | None = None,
            within: str | None = None, against: str | None = None, alpha: float = 0.05) -> Comparison:
    """Compare the runs under ``out`` (one output directory or a list of them). ``within``: a grouping key
    whose values split the table into blocks; the best of each column is then marked within each block.
    ``against``: a baseline group; each group's difference to it, paired by seed (:mod:`mixcli.stats`)."""
    if rule is not None and rule not in RULES:
        raise MixcliError(f"--select {rule}: expected one of {', '.join(RULES)}")
    outs = [Path(o) for o in out] if isinstance(out, (list, tuple)) else [Path(out)]
    where = ", ".join(map(str, outs))
    notes: list[str] = []
    runs, epochs = _read_all(outs, notes)
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


def fmt_value(metric: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    info = metric_info(metric)
    return f"{v * 100:.2f}" if info.percent else f"{v:.4f}"


#: short metric names for narrow terminals (the caption lists the ones a table uses)
ABBREV = {"accuracy": "acc", "nll": "nll", "ece": "ece", "mean_recall": "mrec", "worst_class_recall": "wrec",
          "min_ht_recall": "htrec", "gmean": "gmean", "hmean": "hmean", "min_coverage": "mincov",
          "rmse": "rmse", "mape": "mape", "pearson_r": "r", "worst_domain_rmse": "wdrmse"}


def header(metric: str, short: bool = False) -> str:
    info = metric_info(metric)
    arrow = "↑" if info.higher_is_better else "↓"
    name = ABBREV.get(metric, metric) if short else metric
    return f"{name}{' %' if info.percent else ''} {arrow}"


def cells(c: Comparison, i: int, m: str, sep: str = " ± ") -> str:
    """``mean ± std``; a group of one run shows its value alone (its ``n`` column says 1)."""
    row = c.table.iloc[i]
    if int(row["n"]) == 1 or pd.isna(row[f"{m}_std"]):
        return fmt_value(m, row[f"{m}_mean"])
    return f"{fmt_value(m, row[f'{m}_mean'])}{sep}{fmt_value(m, row[f'{m}_std'])}"


def best_note(c: Comparison, how: str) -> str:
    scope = f" within each {c.within}" if c.within else ""
    return f"best mean per column{scope} {how}"


def fmt_diff(metric: str, v) -> str:
    return "-" if v is None else ("+" if v >= 0 else "") + fmt_value(metric, v)


def fmt_p(p) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def paired_title(c: Comparison) -> str:
    level = f"{100 * (1 - c.alpha):g}%"
    on = " and ".join(c.pair_on)
    return (f"Δ = group − {c.against}, paired by {on}: mean difference ± standard error, {level} CI, "
            f"wins/ties/losses, p-values of the paired t-test (t), Wilcoxon signed-rank test (W) and the t-test's "
            f"Holm-adjusted over the groups compared with one baseline (Holm); ns = Holm p not below "
            f"α = {c.alpha:g}")


def effect_title(c: Comparison) -> str:
    level = f"{100 * (1 - c.alpha):g}%"
    return (f"Δ = group − {c.against}: {level} percentile bootstrap interval over seeds, P(beat) = probability "
            f"of beating {c.against} on a paired seed (normal model), seeds for 80% power = pairs a "
            f"paired t-test at α = {c.alpha:g} needs to detect this Δ (per group for Welch)")


PAIRED_CAPTION = "Welch = unpaired Welch t-test, the seeds differ (n = group vs baseline runs)"


def paired_cells(c: Comparison, r: PairedRow) -> list[str]:
    """group, metric, n, Δ ± SE, CI, W/T/L (or Welch), p (t), p (W)."""
    m = r.metric
    n = str(r.n) if r.test == "paired" else f"{r.n} vs {r.n_baseline}"
    diff = fmt_diff(m, r.diff) + ("" if r.se is None else f" ± {fmt_value(m, r.se)}")
    if r.significant is False:
        diff += " ns"
    ci = "-" if r.ci_low is None else f"[{fmt_diff(m, r.ci_low)}, {fmt_diff(m, r.ci_high)}]"
    wtl = "Welch" if r.test == "Welch" else f"{r.wins}/{r.ties}/{r.losses}"
    return [group_label(r.group), header(m), n, diff, ci, wtl, fmt_p(r.t_p), fmt_p(r.wilcoxon_p),
            fmt_p(r.holm_p)]


PAIRED_HEAD = ["group", "metric", "n", "Δ ± SE", "CI", "W/T/L", "p (t)", "p (W)", "Holm"]


def fmt_seeds(r: PairedRow) -> str:
    if r.seeds_80 is not None:
        return str(r.seeds_80)
    return "-" if r.se is None or r.diff == 0 else f"> {MAX_SEEDS}"


def effect_cells(c: Comparison, r: PairedRow) -> list[str]:
    """group, metric, Δ, bootstrap interval, P(beat), seeds for 80% power."""
    m = r.metric
    boot = "-" if r.boot_low is None else f"[{fmt_diff(m, r.boot_low)}, {fmt_diff(m, r.boot_high)}]"
    beat = "-" if r.p_beat is None else f"{r.p_beat:.2f}"
    return [group_label(r.group), header(m), fmt_diff(m, r.diff), boot, beat, fmt_seeds(r)]


EFFECT_HEAD = ["group", "metric", "Δ", "bootstrap CI", "P(beat)", "seeds for 80% power"]


def paired_json(r: PairedRow) -> dict:
    return {"baseline": group_label(r.baseline), "test": r.test, "n": r.n, "n_baseline": r.n_baseline,
            "mean": r.mean, "baseline_mean": r.baseline_mean, "diff": r.diff, "se": r.se, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "wins": r.wins, "ties": r.ties, "losses": r.losses, "t_p": r.t_p,
            "wilcoxon_p": r.wilcoxon_p, "holm_p": r.holm_p, "significant": r.significant,
            "boot_low": r.boot_low, "boot_high": r.boot_high, "p_beat": r.p_beat, "seeds_80": r.seeds_80}


def _paired_by_group(c: Comparison) -> dict[tuple, dict[str, PairedRow]]:
    out: dict[tuple, dict[str, PairedRow]] = {}
    for r in c.paired or []:
        out.setdefault(tuple(r.group[k] for k in c.by), {})[r.metric] = r
    return out


def render(c: Comparison, fmt: str = "table", width: int | None = None, color: bool | None = None):
    """A rich Table (``table``) or a string (``markdown``, ``csv``, ``json``, ``latex``).

    The table fits ``width`` columns (default: the terminal's): when the full table is wider, metric names
    are abbreviated (listed in the caption), ``mean±std`` loses its spaces, vertical rules go, and group
    labels wrap between words, never inside one or inside a number. The best cells are bold green with
    ``color`` (default: whether stdout shows colour), else marked with a ``*``; the caption says which.
    With ``against``, the paired statistics come as a second table (``table``, ``markdown``), as extra
    columns per metric (``csv``: ``<metric>_diff``, ``_se``, ``_ci_low``, ``_ci_high``, ``_wins``, ``_ties``,
    ``_losses``, ``_t_p``, ``_wilcoxon_p``, ``_holm_p``, ``_test``, ``_significant``, ``_boot_low``,
    ``_boot_high``, ``_p_beat``, ``_seeds_80``, and a ``baseline`` column) or under
    ``vs_baseline`` of each metric (``json``)."""
    by_group = _paired_by_group(c)
    if fmt == "json":
        rows = []
        for i in range(len(c.table)):
            row = {k: c.table.iloc[i][k] for k in c.by}
            row["n"] = int(c.table.iloc[i]["n"])
            pr = by_group.get(tuple(row[k] for k in c.by), {})
            for m in c.metrics:
                row[m] = {"mean": _num(c.table.iloc[i][f"{m}_mean"]), "std": _num(c.table.iloc[i][f"{m}_std"]),
                          "best": c.is_best(m, i)}
                if c.against is not None:
                    row[m]["vs_baseline"] = paired_json(pr[m]) if m in pr else None
            rows.append(row)
        doc = {"title": c.title, "selection": c.rule_label, "by": c.by, "within": c.within,
               "metrics": c.metrics, "groups": rows, "notes": c.notes}
        if c.against is not None:
            doc.update(against=c.against, alpha=c.alpha, paired_on=c.pair_on, paired_title=paired_title(c))
        return json.dumps(doc, indent=2)
    if fmt == "csv":
        table = c.table.copy()
        if c.against is not None:
            keys = [tuple(table.iloc[i][k] for k in c.by) for i in range(len(table))]
            firsts = [next(iter(by_group[k].values()), None) if k in by_group else None for k in keys]
            table["baseline"] = [group_label(r.baseline) if r else None for r in firsts]
            for m in c.metrics:
                rs = [by_group.get(k, {}).get(m) for k in keys]
                for f in ("diff", "se", "ci_low", "ci_high", "wins", "ties", "losses", "t_p", "wilcoxon_p",
                          "holm_p", "test", "significant", "boot_low", "boot_high", "p_beat", "seeds_80"):
                    table[f"{m}_{f}"] = pd.Series([getattr(r, f) if r else None for r in rs], dtype=object)
        return table.to_csv(index=False)
    if fmt == "latex":
        from .latex import latex_table

        return latex_table(c)
    if fmt == "markdown":
        head = [*c.by, "n", *(header(m) for m in c.metrics)]
        lines = [f"**{c.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i in range(len(c.table)):
            vals = [str(c.table.iloc[i][k]) for k in c.by] + [str(int(c.table.iloc[i]["n"]))]
            vals += [f"**{cells(c, i, m)}**" if c.is_best(m, i) else cells(c, i, m) for m in c.metrics]
            lines.append("| " + " | ".join(vals) + " |")
        lines += [f"_{best_note(c, 'in bold')}_"] + [f"_{n}_" for n in c.notes]
        if c.against is not None:
            lines += ["", f"**{paired_title(c)}**", "", "| " + " | ".join(PAIRED_HEAD) + " |",
                      "|" + "---|" * len(PAIRED_HEAD)]
            lines += ["| " + " | ".join(paired_cells(c, r)) + " |" for r in c.paired]
            if any(r.test == "Welch" for r in c.paired):
                lines.append(f"_{PAIRED_CAPTION}_")
            lines += ["", f"**{effect_title(c)}**", "", "| " + " | ".join(EFFECT_HEAD) + " |",
                      "|" + "---|" * len(EFFECT_HEAD)]
            lines += ["| " + " | ".join(effect_cells(c, r)) + " |" for r in c.paired]
        return "\n".join(lines)
    from rich.console import Console

    width = width or Console().width
    if color is None:
        probe = Console()
        color = probe.color_system is not None and not probe.no_color
    full = _rich_table(c, compact=False, color=color)
    if _width(full) <= width:
        return full
    return _rich_table(c, compact=True, color=color)


def _width(table) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, table).maximum


def _rich_table(c: Comparison, compact: bool, color: bool):
    """The terminal table. ``compact`` (narrow terminals): short metric names (listed in the caption),
    ``mean±std`` without spaces, no vertical rules, grouping keys by their last dotted part."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    how = "in bold green" if color else "marked *"
    caption = [best_note(c, how)]
    if compact:
        used = [f"{ABBREV[m]} = {m}" for m in c.metrics if ABBREV.get(m, m) != m]
        caption += [", ".join(used)] if used else []
    counts = set(c.table["n"].astype(int))
    show_n = not compact or len(counts) > 1
    if not show_n:
        caption.append(f"n = {counts.pop()} per group")
    caption += c.notes
    opts = dict(box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False, title_justify="left",
                caption_justify="left") if compact else {}
    t = Table(title=c.title, caption="; ".join(caption), **opts)
    # one column per grouping key when there are few; else one "group" column of key=value labels (narrow
    # terminals keep the numbers readable)
    merged = len(c.by) > 2
    keys = ["group"] if merged else c.by
    short = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [[str(c.table.iloc[i][k]) for k in c.by] for i in range(len(c.table))]
    if merged:
        labels = [[group_label(dict(zip(c.by, row)))] for row in labels]
    for j, (k, s) in enumerate(zip(keys, short)):
        name = s if compact and short.count(s) == 1 else k
        word = max((len(w) for row in labels for w in row[j].split()), default=1)  # labels break between words
        t.add_column(name, style="cyan", overflow="fold", min_width=word)
    if show_n:
        t.add_column("n", justify="right", no_wrap=True)
    sep = "±" if compact else " ± "
    for m in c.metrics:
        t.add_column(header(m, short=compact), justify="right", no_wrap=True)
    for i in range(len(c.table)):
        if c.within and i and c.table.iloc[i][c.within] != c.table.iloc[i - 1][c.within]:
            t.add_section()
        vals = labels[i] + ([str(int(c.table.iloc[i]["n"]))] if show_n else [])
        for m in c.metrics:
            v = cells(c, i, m, sep)
            if c.is_best(m, i):
                v = f"[bold green]{v}[/]" if color else f"{v}*"
            elif not color:
                v += " "  # keeps the columns aligned with the marked cells
            vals.append(v)
        t.add_row(*vals)
    if c.against is None:
        return t
    caption = "ns rows dimmed" + ("; " + PAIRED_CAPTION if any(r.test == "Welch" for r in c.paired) else "")
    one = len(c.metrics) == 1  # the metric goes in the title, the numbers keep the width
    p = Table(title=(f"{header(c.metrics[0])}: " if one else "") + paired_title(c), caption=caption,
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for k in PAIRED_HEAD:
        if not (one and k == "metric"):
            p.add_column(k, style="cyan" if k == "group" else None, justify="left" if k in ("group", "metric")
                         else "right", overflow="fold", no_wrap=k not in ("group", "Δ ± SE"))
    for r in c.paired:
        cells_ = paired_cells(c, r)
        p.add_row(*(cells_[:1] + cells_[2:] if one else cells_), style="dim" if r.significant is False else None)
    e = Table(title=(f"{header(c.metrics[0])}: " if one else "") + effect_title(c), box=box.SIMPLE_HEAD,
              padding=(0, 1), pad_edge=False, collapse_padding=True)
    for k in EFFECT_HEAD:
        if not (one and k == "metric"):
            e.add_column(k, style="cyan" if k == "group" else None, justify="left" if k in ("group", "metric")
                         else "right", overflow="fold", no_wrap=k not in ("group", "seeds for 80% power"))
    for r in c.paired:
        cells_ = effect_cells(c, r)
        e.add_row(*(cells_[:1] + cells_[2:] if one else cells_), style="dim" if r.significant is False else None)
    return Group(t, p, e)


def _num(v):
    v = float(v)
    return None if math.isnan(v) else v
