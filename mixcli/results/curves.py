"""Generalization curves (``mixcli curves``): a metric against the epoch, one curve per group, and whether
each curve is U-shaped (Liu, Wang, Guo, Mao, "Over-Training with Mixup May Hurt Generalization", ICLR 2023).

A group's curve is the mean over its runs (seeds) of ``<split>_<metric>`` at every evaluated epoch; its spread
is the sample standard deviation across runs (ddof=1; 0 for one run). Groups are formed as in
``mixcli compare`` (default: the method plus the configuration keys that vary).

Curve statistics (pure functions below; "better" means higher for metrics where higher is better, e.g.
accuracy, and lower for the others, e.g. rmse, nll):

- best epoch / best value: the epoch of the mean curve's best finite value; ties go to the earliest epoch.
- final value: the mean curve at its last evaluated epoch (``last``).
- drop: ``best - final`` when higher is better, ``final - best`` otherwise; >= 0, in the metric's units.
- spread: the std across runs at the last epoch.
- **U-shape rule**: ``best_epoch <= 0.8 * last`` (the peak comes well before the end) **and**
  ``drop > max(spread, floor)`` (the decline exceeds the seed-to-seed spread and a small absolute floor).
  ``floor`` is 0.005 (half a percentage point) for metrics reported in percent (accuracy, ece, recalls) and
  1% of ``|best|`` for the others. A single-epoch curve is never U-shaped (its peak is its last epoch).

The table's ``selected`` column applies an epoch selection rule of :mod:`mixcli.results.selection` to every run
(``--select``, default the experiment's ``eval.selection``) and shows mean ± std over seeds; the rule is named
in the title.

The terminal view draws each group as a braille line chart on its own y scale (the range of the mean curve
after the first 10% of epochs, so a steep start does not flatten the rest) with a shared epoch axis, then
one table row per group; ``--png`` writes a matplotlib figure (mean, ±1 std band, best epoch marked).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MixcliError, did_you_mean
from ..metrics import all_metrics, known_metric, metric_info
from .compare import compare
from .render import fmt_value
from .runs import UNSET, group_keys, group_label, load_runs, read_results
from .selection import PRIMARY

PEAK_FRACTION = 0.8
PERCENT_FLOOR = 0.005
RELATIVE_FLOOR = 0.01
CLIP_FRACTION = 0.1
UNITS = {"nll": "nats", "rmse": "target units", "worst_domain_rmse": "target units", "mape": "%"}


# -------------------------------------------------------------------------------------------- statistics
def best_point(epochs, values, higher_is_better: bool) -> tuple[int, float]:
    """(epoch, value) of the best finite value; ties go to the earliest epoch. Raises ValueError if none."""
    ep = np.asarray(epochs, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.flatnonzero(np.isfinite(v))
    if ok.size == 0:
        raise ValueError("the curve has no finite value")
    order = ok[np.lexsort((ep[ok], -v[ok] if higher_is_better else v[ok]))]
    i = order[0]
    return int(ep[i]), float(v[i])


def drop(best: float, final: float, higher_is_better: bool) -> float:
    """How much worse the final value is than the best, in the metric's units (sign-adjusted)."""
    return best - final if higher_is_better else final - best


def drop_floor(metric: str, best: float) -> float:
    """The smallest drop that can count as a U-shape: 0.005 for percent metrics, else 1% of ``|best|``."""
    info = (metric_info(metric) if known_metric(metric) else None)
    return PERCENT_FLOOR if info is not None and info.percent else RELATIVE_FLOOR * abs(best)


def is_u_shaped(best_epoch: int, last_epoch: int, drop_: float, spread: float, floor: float,
                peak_fraction: float = PEAK_FRACTION) -> bool:
    """The U-shape rule: the peak is at ``<= peak_fraction * last_epoch`` and ``drop > max(spread, floor)``."""
    spread = 0.0 if not math.isfinite(spread) else spread
    return best_epoch <= peak_fraction * last_epoch and drop_ > max(spread, floor)


@dataclass(frozen=True)
class CurveStats:
    best_epoch: int
    best: float
    last_epoch: int
    final: float
    drop: float
    spread: float
    floor: float
    u_shaped: bool


def curve_stats(epochs, mean, final_std: float, metric: str, higher_is_better: bool | None = None) -> CurveStats:
    """All statistics of one mean curve (``epochs`` ascending or not; NaN values are skipped)."""
    if higher_is_better is None:
        higher_is_better = metric_info(metric).higher_is_better
    ep = np.asarray(epochs, dtype=float)
    v = np.asarray(mean, dtype=float)
    ok = np.isfinite(v)
    if not ok.any():
        raise ValueError("the curve has no finite value")
    be, bv = best_point(ep, v, higher_is_better)
    last = int(ep[ok].max())
    final = float(v[ok][np.argmax(ep[ok])])
    d = drop(bv, final, higher_is_better)
    floor = drop_floor(metric, bv)
    spread = float(final_std) if final_std is not None and math.isfinite(final_std) else 0.0
    return CurveStats(be, bv, last, final, d, spread, floor, is_u_shaped(be, last, d, spread, floor))


# ----------------------------------------------------------------------------------------------- loading
@dataclass
class Curve:
    label: str
    keys: dict[str, str]
    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    runs: int
    stats: CurveStats
    selected: tuple[float, float] = (float("nan"), float("nan"))


@dataclass
class Curves:
    experiment: str
    metric: str
    split: str
    by: list[str]
    rule_label: str
    curves: list[Curve]
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.experiment}: {self.split} {self.metric} per epoch, mean over seeds"


def _sort_key(v: str):
    """Unset values first, then numbers in numeric order, then text."""
    if v in UNSET:
        return (0, 0.0, "")
    try:
        return (1, float(v), "")
    except ValueError:
        return (2, 0.0, v)


def _is_method_key(k: str) -> bool:
    return k == "method" or k.startswith("method.")


def load_curves(out: Path | str, metric: str | None = None, by: list[str] | None = None, split: str = "test",
                rule: str | None = None) -> Curves:
    """The mean curve of every group of finished runs under ``out`` (see the module docstring)."""
    if split not in ("test", "val"):
        raise MixcliError(f"--split {split}: expected test or val")
    runs = load_runs(out)
    finished = runs[runs["status"] == "finished"]
    task = finished["task"].iloc[0] if len(finished) else "classification"
    metric = metric or PRIMARY.get(task, "accuracy")
    if not known_metric(metric):
        raise MixcliError(f"--metric {metric}: unknown metric{did_you_mean(metric, all_metrics())}")
    cmp = compare(out, by=by, metrics=[metric], rule=rule, split=split)  # groups, rule and checks as compare
    finished = finished.reset_index(drop=True)
    col = f"{split}_{metric}"
    epochs = read_results(out, "epochs")
    keys = pd.concat([finished[["run_id"]], group_keys(finished, cmp.by)], axis=1)
    data = epochs[["run_id", "epoch", col]].merge(keys, on="run_id").dropna(subset=[col])
    selected = {tuple(str(r[k]) for k in cmp.by): (r[f"{metric}_mean"], r[f"{metric}_std"])
                for _, r in cmp.table.iterrows()}
    out_curves = []
    for gkey, g in data.groupby(cmp.by, sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        per = g.groupby("epoch")[col]
        ep = per.mean().index.to_numpy()
        mean = per.mean().to_numpy()
        std = per.std(ddof=1).fillna(0.0).to_numpy()
        stats = curve_stats(ep, mean, std[-1], metric)
        kd = dict(zip(cmp.by, map(str, gkey)))
        out_curves.append(Curve(group_label(kd), kd, ep, mean, std, g["run_id"].nunique(), stats,
                                selected.get(tuple(map(str, gkey)), (float("nan"), float("nan")))))
    if not out_curves:
        raise MixcliError(f"{out}: no {split} {metric} values recorded per epoch")
    order = [k for k in cmp.by if not _is_method_key(k)] + [k for k in cmp.by if _is_method_key(k)]
    out_curves.sort(key=lambda c: [_sort_key(c.keys[k]) for k in order])  # e.g. by fraction, then method
    return Curves(str(finished["experiment"].iloc[0]), metric, split, cmp.by, cmp.rule_label, out_curves, cmp.notes)


# ------------------------------------------------------------------------------------------ terminal chart
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille bit of (row, column) in a cell


def braille_rows(xs, ys, width: int, height: int, x_range: tuple[float, float],
                 y_range: tuple[float, float]) -> list[list[int]]:
    """A line through the points ``(xs, ys)`` on a ``width`` x ``height`` grid of braille cells (2 x 4 dots
    each); returns the bit mask of every cell (``chr(0x2800 + mask)`` is the character). NaNs are skipped."""
    w, h = 2 * width, 4 * height
    (x0, x1), (y0, y1) = x_range, y_range
    sx = (w - 1) / (x1 - x0) if x1 > x0 else 0.0
    sy = (h - 1) / (y1 - y0) if y1 > y0 else 0.0
    pts = [(round((x - x0) * sx), (h - 1) - round((y - y0) * sy) if sy else h // 2)
           for x, y in zip(xs, ys) if math.isfinite(y)]
    grid = [[0] * width for _ in range(height)]

    def dot(px: int, py: int) -> None:
        px, py = min(max(px, 0), w - 1), min(max(py, 0), h - 1)
        grid[py // 4][px // 2] |= _DOTS[py % 4][px % 2]

    for (ax, ay), (bx, by) in zip(pts, pts[1:]):
        n = max(abs(bx - ax), abs(by - ay), 1)
        for t in range(n + 1):
            dot(round(ax + (bx - ax) * t / n), round(ay + (by - ay) * t / n))
    if len(pts) == 1:
        dot(*pts[0])
    return grid


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, max_ticks - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def render_chart(cv: Curves, width: int = 80, height: int = 4, use_color: bool | None = None):
    """The curves as braille charts (one per group, own y scale, shared epoch axis) as a rich renderable."""
    from rich.console import Group
    from rich.text import Text

    scale = 100.0 if metric_info(cv.metric).percent else 1.0
    lo_ep = min(float(c.epochs.min()) for c in cv.curves)
    hi_ep = max(float(c.epochs.max()) for c in cv.curves)
    ylab = 8
    plot_w = max(10, width - ylab - 2)
    parts = [Text(cv.title, style="bold")]
    for i, c in enumerate(cv.curves):
        color = COLORS[i % len(COLORS)]
        ys = c.mean * scale
        ok = np.isfinite(ys)
        late = ok & (c.epochs >= lo_ep + CLIP_FRACTION * (hi_ep - lo_ep))  # the start may be clipped
        span = np.append(ys[late] if late.sum() >= 2 else ys[ok], c.stats.best * scale)
        lo, hi = float(span.min()), float(span.max())
        grid = braille_rows(c.epochs, ys, plot_w, height, (lo_ep, hi_ep), (lo, hi))
        s = c.stats
        bx = round((s.best_epoch - lo_ep) * (2 * plot_w - 1) / (hi_ep - lo_ep)) // 2 if hi_ep > lo_ep else 0
        head = Text(f"{c.label}", style=f"bold {color}")
        head.append(f"  best {fmt_value(cv.metric, s.best)} @ epoch {s.best_epoch}, final "
                    f"{fmt_value(cv.metric, s.final)}" + ("  U-shaped" if s.u_shaped else ""), style="dim")
        head.truncate(width, overflow="ellipsis")
        parts.append(head)
        for r, row in enumerate(grid):
            tick = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""
            line = Text(f"{tick:>{ylab}} ┤" if tick else " " * ylab + " │", style="dim")
            for x, m in enumerate(row):
                line.append(chr(0x2800 + m), style="bold yellow" if x == bx and m else color)
            parts.append(line)
    ticks = nice_ticks(lo_ep, hi_ep)
    axis = [" "] * plot_w
    labels = list("epoch".rjust(ylab - 2)) + [" "] * (plot_w + 4)
    for t in ticks:
        x = round((t - lo_ep) * (2 * plot_w - 1) / (hi_ep - lo_ep)) // 2 if hi_ep > lo_ep else 0
        axis[x] = "┬"
        s = f"{t:g}"
        start = min(max(ylab + 1 + x - len(s) // 2, 0), len(labels) - len(s))
        if all(ch == " " for ch in labels[max(0, start - 1):start + len(s) + 1]):
            labels[start:start + len(s)] = s
    parts.append(Text(" " * ylab + " └" + "".join("─" if a == " " else a for a in axis), style="dim"))
    parts.append(Text("".join(labels).rstrip(), style="dim"))
    parts.append(Text(f"each chart on its own y scale: max/min of the mean curve after the first "
                      f"{CLIP_FRACTION:.0%} of epochs (earlier points clipped); best epoch "
                      f"{'in bold yellow' if _has_color(use_color) else 'as named above each chart'}",
                      style="dim italic"))
    return Group(*parts)


def render_table(cv: Curves):
    """One row per group: best epoch, best, final, drop, seed spread, selected value, U-shaped."""
    from rich import box
    from rich.table import Table

    m = cv.metric
    pct = metric_info(m).percent
    unit = " (points)" if pct else ""
    floor = "0.5 points" if pct else "1% of |best|"
    t = Table(title=f"{cv.experiment}: {cv.split} {m} curves; selected = {cv.rule_label}, mean ± std", caption=(
        f"drop = how much worse final is than best{unit}; spread = std over seeds at the last epoch; "
        f"U-shaped: best epoch <= {PEAK_FRACTION:g} x last epoch and drop > max(spread, {floor})"
        + ("; " + "; ".join(cv.notes) if cv.notes else "")),
        box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for col in ("group", "n", "best ep", "best", "final", "drop", "spread", "selected", "U-shaped"):
        t.add_column(col, style="cyan" if col == "group" else None, justify="left" if col == "group" else "right",
                     overflow="fold")
    for c in cv.curves:
        s = c.stats
        sel_m, sel_s = c.selected
        t.add_row(c.label, str(c.runs), f"{s.best_epoch}/{s.last_epoch}", fmt_value(m, s.best),
                  fmt_value(m, s.final), fmt_value(m, s.drop), fmt_value(m, s.spread),
                  fmt_value(m, sel_m) + ("" if pd.isna(sel_s) else f"±{fmt_value(m, sel_s)}"),
                  "[bold red]yes[/]" if s.u_shaped else "no")
    return t


# ------------------------------------------------------------------------------------------------- figure
def axis_label(split: str, metric: str) -> str:
    unit = "%" if metric_info(metric).percent else UNITS.get(metric, "")
    return f"{split} {metric}" + (f" ({unit})" if unit else "")


def plot_png(cv: Curves, path: Path | str, dpi: int = 150) -> Path:
    """A publication-quality figure of the curves: mean line, ±1 std band, best epoch starred. Groups that
    differ only by method settings share a panel; the other grouping keys (e.g. dataset.fraction) make
    one panel each (at most 12, else everything goes in one panel). The y axis spans the curves after the
    first 10% of epochs (the steep start runs off the top or bottom), as in the terminal chart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = Path(path)
    line_keys = [k for k in cv.by if _is_method_key(k)]
    panel_keys = [k for k in cv.by if k not in line_keys]
    panels: dict[str, list[Curve]] = {}
    for c in cv.curves:
        name = group_label({k: c.keys[k] for k in panel_keys}) if line_keys and panel_keys else ""
        panels.setdefault(name, []).append(c)
    if len(panels) > 12:
        panels = {"": cv.curves}
    names = list(panels)
    line_label = (lambda c: group_label({k: c.keys[k] for k in line_keys})) if len(names) > 1 else (lambda c: c.label)
    order = list(dict.fromkeys(line_label(c) for c in cv.curves))
    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
    colors = {lab: palette[i % len(palette)] for i, lab in enumerate(order)}
    first = {lab: lab.split(" ")[0] for lab in order}  # variants of one method get dashed lines
    dashes = {lab: ("-", "--", "-.", ":")[[first[o] for o in order[:i]].count(first[lab]) % 4]
              for i, lab in enumerate(order)}
    scale = 100.0 if metric_info(cv.metric).percent else 1.0
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(max(6.4, 4.6 * ncols), 3.6 * nrows + 0.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, names):
        lows, highs = [], []
        for c in panels[name]:
            col = colors[line_label(c)]
            mean, std = c.mean * scale, c.std * scale
            late = c.epochs >= c.epochs.min() + CLIP_FRACTION * (c.epochs.max() - c.epochs.min())
            late = late if late.sum() >= 2 else np.ones_like(late)
            lows += [np.nanmin((mean - std)[late]), c.stats.best * scale]
            highs += [np.nanmax((mean + std)[late]), c.stats.best * scale]
            ax.plot(c.epochs, mean, color=col, lw=1.6, ls=dashes[line_label(c)])
            ax.fill_between(c.epochs, mean - std, mean + std, color=col, alpha=0.18, lw=0)
            ax.plot([c.stats.best_epoch], [c.stats.best * scale], marker="*", ms=11, color=col,
                    markeredgecolor="black", markeredgewidth=0.6, zorder=5)
            ax.axvline(c.stats.best_epoch, color=col, lw=0.8, ls=":", alpha=0.8)
        lo, hi = min(lows), max(highs)
        pad = 0.08 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-9
        ax.set_ylim(lo - pad, hi + pad)  # the steep start is cut off so the late shape shows
        if name:
            ax.set_title(name, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(axis_label(cv.split, cv.metric))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[lab], lw=2, ls=dashes[lab], label=lab) for lab in order]
    handles += [Patch(color="grey", alpha=0.3, label="±1 std over seeds"),
                Line2D([], [], marker="*", ms=11, ls="", color="grey", markeredgecolor="black", label="best epoch")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3 if ncols == 1 else 5),
               frameon=False)
    n = max(c.runs for c in cv.curves)
    fig.suptitle(f"{cv.experiment}: {cv.split} {cv.metric}, mean ± 1 std over {n} seed{'s' * (n > 1)}",
                 fontsize=11)
    path = figure_path(path, f"curves_{cv.split}_{cv.metric}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def figure_path(path: Path | str, default_name: str) -> Path:
    """Where ``--png PATH`` writes: into PATH when it is a folder (``default_name``), PATH itself when it
    names a file; a name without a suffix gets ``.png`` (what matplotlib would silently add)."""
    path = Path(path)
    if path.is_dir():
        return path / default_name
    return path if path.suffix else path.with_suffix(".png")


def _has_color(color: bool | None) -> bool:
    """``color``, or (None) whether stdout shows colour: piped output has no bold yellow to point at."""
    if color is not None:
        return color
    from rich.console import Console

    probe = Console()
    return probe.color_system is not None and not probe.no_color
