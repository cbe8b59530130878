"""Reliability diagrams (``mixcli reliability``) from what the ``calibration`` evaluator records.

Each run with ``calibration`` in ``eval.extra`` writes ``OUT/jobs/<run_id>/calibration.json``: the fitted
temperature and, per equal-width confidence bin ``(b/n, (b+1)/n]``, the count, the sum of confidences and the
number correct on the test split, before and after temperature scaling (at the last evaluation that ran it).
Runs are grouped as in ``mixcli compare``; a group's bins are the sums over its runs (its seeds), so its
diagram and ECE are those of the pooled test predictions: ``acc_b = correct_b / count_b``,
``conf_b = conf_sum_b / count_b``, ``ECE = sum_b |correct_b - conf_sum_b| / N``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MixcliError
from .runs import clean_line, group_keys, group_label, load_runs, read_side_file, stderr_warning, varying_keys

ARTIFACT = "calibration.json"


@dataclass
class Bins:
    count: np.ndarray
    conf: np.ndarray
    correct: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        return float(np.abs(self.correct - self.conf).sum() / n) if n else math.nan

    def accuracy(self) -> np.ndarray:
        return np.divide(self.correct, self.count, out=np.full(len(self.count), np.nan), where=self.count > 0)

    def confidence(self) -> np.ndarray:
        return np.divide(self.conf, self.count, out=np.full(len(self.count), np.nan), where=self.count > 0)


@dataclass
class Group:
    label: str
    runs: int
    temperatures: list[float]
    before: Bins
    after: Bins


def _bins(docs: list[dict], key: str) -> Bins:
    return Bins(*(np.sum([np.asarray(d[key][f], dtype=float) for d in docs], axis=0)
                  for f in ("count", "conf", "correct")))


MAX_BINS = 1000  # the calibration evaluator's bound on its 'bins' option


def _check_bins(doc) -> str | None:
    """Why ``doc`` is not a calibration.json the calibration evaluator writes, or None."""
    if not isinstance(doc, dict):
        return "not a JSON mapping"
    n = doc.get("bins")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_BINS:
        return f"'bins' is not an integer from 1 to {MAX_BINS}"
    t = doc.get("temperature")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
        return "'temperature' is not a positive number"
    for key in ("before", "after"):
        part = doc.get(key)
        if not isinstance(part, dict):
            return f"'{key}' is not a mapping of count, conf and correct"
        for f in ("count", "conf", "correct"):
            vals = part.get(f)
            if not isinstance(vals, list) or len(vals) != n or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in vals):
                return f"'{key}.{f}' is not a list of {n} finite numbers >= 0"
    return None


def read_bins(path: Path) -> dict | None:
    """A run's calibration.json, or None (with one warning line naming it) when it is not one the
    calibration evaluator writes (not a regular file, too large, not JSON, another shape)."""
    try:
        doc = json.loads(read_side_file(path, 16 * 2**20).decode("utf-8"))
        why = _check_bins(doc)
    except RecursionError:
        why = "nested too deeply"
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        why = clean_line(getattr(exc, "strerror", None) or exc, 100)
    if why is None:
        return doc
    stderr_warning(f"skipped {clean_line(path)}: {why}")
    return None


def load_reliability(out: Path | str, by: list[str] | None = None) -> tuple[str, list[Group]]:
    """The experiment name and one pooled :class:`Group` per group of finished runs that recorded bins."""
    out = Path(out)
    runs = load_runs(out)
    runs = runs[runs["status"] == "finished"].reset_index(drop=True)
    if runs.empty:
        raise MixcliError(f"{out}: no finished runs yet")
    by = list(by) if by else varying_keys(runs)
    for key in by:
        if key not in runs.columns:
            raise MixcliError(f"--by {key}: no such column or configuration key")
    keys = group_keys(runs, by)
    docs: dict[tuple, list[dict]] = {}
    for i, r in runs.iterrows():
        path = out / "jobs" / r["run_id"] / ARTIFACT
        if path.exists() or path.is_symlink():
            doc = read_bins(path)
            if doc is not None:
                docs.setdefault(tuple(keys.iloc[i]), []).append(doc)
    if not docs:
        raise MixcliError(f"{out}: no run recorded calibration bins; add 'calibration' to eval.extra in the "
                          "experiment file (e.g. eval: {extra: [calibration]}) and run it")
    groups = []
    for k, ds in docs.items():
        if len({d["bins"] for d in ds}) > 1:
            raise MixcliError(f"{out}: the runs of group {group_label(dict(zip(by, k)))} used different "
                              "numbers of bins; group them with --by")
        groups.append(Group(group_label(dict(zip(by, k))), len(ds), [d["temperature"] for d in ds],
                            _bins(ds, "before"), _bins(ds, "after")))
    return str(runs["experiment"].iloc[0]), groups


def render_table(experiment: str, groups: list[Group]):
    from rich.table import Table

    t = Table(title=f"{experiment}: calibration on test, predictions pooled over seeds",
              caption="T: temperature fitted on val (mean over runs); ECE over equal-width bins")
    for col in ("group", "n", "T", "ECE %", "ECE % after T"):
        t.add_column(col, style="cyan" if col == "group" else None, justify="left" if col == "group" else "right",
                     overflow="fold")
    for g in groups:
        t.add_row(g.label, str(g.runs), f"{np.mean(g.temperatures):.3f}", f"{100 * g.before.ece:.2f}",
                  f"{100 * g.after.ece:.2f}")
    return t


def plot_png(experiment: str, groups: list[Group], path: Path | str, dpi: int = 150) -> Path:
    """One reliability diagram per group: accuracy per confidence bin before (outlined) and after (filled)
    temperature scaling, against the diagonal of perfect calibration, with the bin counts below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = groups[:12]
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 3.9 * nrows + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    outer = fig.subfigures(nrows, ncols, squeeze=False)
    for sub, g in zip(outer.flat, groups):
        ax, axn = sub.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3.2, 1]})
        n_bins = len(g.before.count)
        edges = np.linspace(0, 1, n_bins + 1)
        w = 1.0 / n_bins
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
        ax.bar(edges[:-1], np.nan_to_num(g.after.accuracy()), width=w, align="edge", color="#0072B2", alpha=0.75,
               edgecolor="white", lw=0.5, label=f"after T={np.mean(g.temperatures):.2f}: ECE {100 * g.after.ece:.1f}%")
        ax.bar(edges[:-1], np.nan_to_num(g.before.accuracy()), width=w, align="edge", fill=False,
               edgecolor="#D55E00", lw=1.4, label=f"before: ECE {100 * g.before.ece:.1f}%")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        sub.suptitle(f"{g.label} (n={g.runs})", fontsize=10)
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), borderaxespad=0, frameon=False)
        ax.grid(alpha=0.3)
        axn.bar(edges[:-1], g.before.count, width=w, align="edge", fill=False, edgecolor="#D55E00", lw=1.2)
        axn.bar(edges[:-1], g.after.count, width=w, align="edge", color="#0072B2", alpha=0.6)
        axn.set_yscale("symlog")
        axn.set_ylabel("count")
        axn.set_xlabel("confidence (max softmax)")
    for sub in list(outer.flat)[len(groups):]:
        sub.set_visible(False)
    fig.suptitle(f"{experiment}: reliability on test (pooled over seeds)", fontsize=11)
    from .curves import figure_path

    path = figure_path(path, "reliability.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
