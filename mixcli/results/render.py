"""Rendering a :class:`mixcli.results.compare.Comparison`: the terminal table (rich), markdown, csv, json
and LaTeX (``compare --format``).

LaTeX: a booktabs table for a paper. One row per group, ``mean $\\pm$ std`` over seeds in each metric column
(the same numbers and rounding as the terminal table), the best mean of each column in bold (within each
block when the table is split with ``--within``; blocks are separated by ``\\midrule``), and the caption
naming the split, the epoch selection rule and the marking. Needs ``\\usepackage{booktabs}`` in the document.
"""
from __future__ import annotations

import json
import math
import re

import pandas as pd

from ..metrics import metric_info
from .compare import Comparison
from .runs import group_label
from .stats import MAX_SEEDS, PairedRow


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
    p = _per_group_table(c, paired_title(c), PAIRED_HEAD, paired_cells, "Δ ± SE", caption)
    e = _per_group_table(c, effect_title(c), EFFECT_HEAD, effect_cells, "seeds for 80% power")
    return Group(t, p, e)


def _per_group_table(c: Comparison, title: str, head: list[str], cells, wraps: str, caption: str | None = None):
    """One of the ``--against`` tables: a row per paired row (``cells(c, r)``), non-significant rows dimmed;
    with one metric, the metric goes in the title and its column is left out, so the numbers keep the width.
    ``wraps``: the column besides the group's that may wrap."""
    from rich import box
    from rich.table import Table

    one = len(c.metrics) == 1
    table = Table(title=(f"{header(c.metrics[0])}: " if one else "") + title, caption=caption,
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for k in head:
        if not (one and k == "metric"):
            table.add_column(k, style="cyan" if k == "group" else None,
                             justify="left" if k in ("group", "metric") else "right", overflow="fold",
                             no_wrap=k not in ("group", wraps))
    for r in c.paired:
        row = cells(c, r)
        table.add_row(*(row[:1] + row[2:] if one else row), style="dim" if r.significant is False else None)
    return table


def _num(v):
    v = float(v)
    return None if math.isnan(v) else v


# ---------------------------------------------------------------------------------------------------- LaTeX
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text (special characters escaped, ± as ``$\\pm$``)."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _SPECIAL[m.group()], str(text))
    return out.replace("±", r"$\pm$")


def _head(metric: str) -> str:
    info = metric_info(metric)
    unit = r" (\%)" if info.percent else ""
    arrow = r"$\uparrow$" if info.higher_is_better else r"$\downarrow$"
    return f"{latex_escape(metric)}{unit} {arrow}"


def latex_table(c) -> str:
    """The LaTeX source of the comparison ``c`` (:class:`mixcli.results.compare.Comparison`)."""
    keys = [k.rsplit(".", 1)[-1] if [x.rsplit(".", 1)[-1] for x in c.by].count(k.rsplit(".", 1)[-1]) == 1
            else k for k in c.by]
    spec = "l" * len(c.by) + "r" + "c" * len(c.metrics)
    note = best_note(c, "in bold")
    caption = f"{c.title}. {note[0].upper()}{note[1:]}."
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join([*map(latex_escape, keys), "$n$", *map(_head, c.metrics)]) + r" \\", r"\midrule"]
    for i in range(len(c.table)):
        row = c.table.iloc[i]
        if c.within and i and row[c.within] != c.table.iloc[i - 1][c.within]:
            lines.append(r"\midrule")
        vals = [latex_escape(row[k]) for k in c.by] + [str(int(row["n"]))]
        for m in c.metrics:
            mean, std = fmt_value(m, row[f"{m}_mean"]), fmt_value(m, row[f"{m}_std"])
            one = int(row["n"]) == 1 or std == "-"  # a single run: its value alone, as in the other formats
            if c.is_best(m, i):
                vals.append(rf"$\mathbf{{{mean}}}$" if one else rf"$\mathbf{{{mean}}} \pm \mathbf{{{std}}}$")
            else:
                vals.append(f"${mean}$" if one else rf"${mean} \pm {std}$")
        lines.append(" & ".join(vals) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    lines += [f"% {n}" for n in c.notes]
    return "\n".join(lines) + "\n"
