"""Paired statistics against a baseline group: the ``--against`` part of ``mixcli compare``.

For every group other than the baseline and every metric, with ``d_s = x_s - b_s`` the difference between the
group's and the baseline's value of the run with the same pairing key ``s`` (the seed, plus any configuration
key the groups pool over, e.g. the data fraction under ``--by method``; the same seed means the same split
and the same initial weights):

- ``diff = mean_s d_s``, ``se = std(d, ddof=1) / sqrt(n)``, and the ``1 - alpha`` confidence interval
  ``diff +- t_{1-alpha/2, n-1} * se`` (Student t, n - 1 degrees of freedom);
- wins / ties / losses: the pairs where the group is better / exactly equal / worse than the baseline, in the
  metric's direction (higher accuracy is better, lower rmse is better);
- the paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``
  with scipy's defaults: zero differences dropped, the exact distribution for small samples), both two-sided.

Pairing needs the same set of pairing keys in both groups, each once. Otherwise the comparison is unpaired:
Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``), ``diff = mean(x) - mean(b)``,
``se = sqrt(s_x^2/n_x + s_b^2/n_b)`` and the interval with the Welch-Satterthwaite degrees of freedom;
wins/ties/losses and the Wilcoxon test are then not defined (``None``), and the row says ``Welch``.

A difference is *significant* when the t-test's p-value (paired or Welch) is below ``alpha``; the interval
then excludes 0. With one pair (n=1) there is no standard error, interval or test (``None``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import MixcliError, did_you_mean
from ..metrics import METRICS


@dataclass
class PairedRow:
    group: dict[str, str]      # the group's keys
    baseline: dict[str, str]   # the baseline group's keys
    metric: str
    test: str                  # "paired" or "Welch"
    n: int                     # pairs (paired) or the group's runs (Welch)
    n_baseline: int
    mean: float                # the group's mean
    baseline_mean: float
    diff: float                # group minus baseline
    se: float | None
    ci_low: float | None
    ci_high: float | None
    wins: int | None
    ties: int | None
    losses: int | None
    t_p: float | None
    wilcoxon_p: float | None
    significant: bool | None   # t-test p < alpha; None when there is no test (n=1)


def _f(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def paired_stats(x: np.ndarray, b: np.ndarray, higher_is_better: bool, alpha: float) -> dict:
    """The paired statistics of ``x - b`` (matched arrays), as documented in the module."""
    d = np.asarray(x, float) - np.asarray(b, float)
    n = len(d)
    out = {"test": "paired", "n": n, "n_baseline": n, "diff": float(d.mean())}
    better = d > 0 if higher_is_better else d < 0
    out.update(wins=int(better.sum()), ties=int((d == 0).sum()), losses=int(n - better.sum() - (d == 0).sum()))
    if n < 2:
        return {**out, "se": None, "ci_low": None, "ci_high": None, "t_p": None, "wilcoxon_p": None}
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * se
    with warnings.catch_warnings():  # identical or constant differences: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = _f(sps.ttest_rel(x, b).pvalue)
        w_p = _f(sps.wilcoxon(d).pvalue)
    return {**out, "se": se, "ci_low": out["diff"] - half, "ci_high": out["diff"] + half, "t_p": t_p,
            "wilcoxon_p": w_p}


def welch_stats(x: np.ndarray, b: np.ndarray, alpha: float) -> dict:
    """Welch's unpaired comparison of ``x`` and ``b``, as documented in the module."""
    x, b = np.asarray(x, float), np.asarray(b, float)
    nx, nb = len(x), len(b)
    out = {"test": "Welch", "n": nx, "n_baseline": nb, "diff": float(x.mean() - b.mean()), "wins": None,
           "ties": None, "losses": None, "wilcoxon_p": None}
    if nx < 2 or nb < 2:
        return {**out, "se": None, "ci_low": None, "ci_high": None, "t_p": None}
    vx, vb = x.var(ddof=1) / nx, b.var(ddof=1) / nb
    se = math.sqrt(vx + vb)
    df = (vx + vb) ** 2 / (vx ** 2 / (nx - 1) + vb ** 2 / (nb - 1)) if se > 0 else float("inf")
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = _f(sps.ttest_ind(x, b, equal_var=False).pvalue)
    return {**out, "se": se, "ci_low": out["diff"] - half, "ci_high": out["diff"] + half, "t_p": t_p}


def find_baselines(labels: dict[tuple, str], keys: dict[tuple, dict[str, str]], against: str) -> dict[tuple, tuple]:
    """For each group (its key tuple), the key tuple of its baseline group.

    ``against`` is a group label as the table shows it (e.g. ``erm`` or ``mixup fraction=0.1``): that one
    group is every group's baseline. Otherwise it may be the value of one grouping key (e.g. ``erm`` under
    ``--by method --by dataset.fraction``): each group is then compared with the group that has this value
    and the same other keys (``erm`` at the same fraction). Failing both, a label whose words are all in
    exactly one group's label picks that group (``manifold_mixup criterion=soft_ce`` for the group
    ``manifold_mixup criterion=soft_ce loss=soft_ce``)."""
    exact = [g for g, lab in labels.items() if lab == against]
    if len(exact) == 1:
        return {g: exact[0] for g in labels}
    if len(exact) > 1:
        raise MixcliError(f"--against {against}: matches {len(exact)} groups; add --by keys to tell them apart")
    by = list(next(iter(keys.values())))
    for k in by:
        hits = [g for g in keys if keys[g][k] == against]
        if not hits:
            continue
        base = {}
        for g in keys:
            others = {j: v for j, v in keys[g].items() if j != k}
            match = [h for h in hits if {j: v for j, v in keys[h].items() if j != k} == others]
            if match:
                base[g] = match[0]
        return base
    words = set(against.split())
    part = [g for g, lab in labels.items() if words <= set(lab.split())]
    if len(part) == 1:
        return {g: part[0] for g in labels}
    if len(part) > 1:
        raise MixcliError(f"--against {against}: matches {len(part)} groups ("
                          + ", ".join(labels[g] for g in part) + "); give one group's full label")
    raise MixcliError(f"--against {against}: no such group{did_you_mean(against, labels.values())}")


def against_baseline(values: pd.DataFrame, by: list[str], pair_on: list[str], metrics: list[str],
                     labels: dict[tuple, str], against: str, alpha: float) -> list[PairedRow]:
    """Rows of paired statistics: every group (not the baseline itself) against its baseline, per metric.

    ``values`` has one row per run: the grouping keys ``by`` (text), the pairing keys ``pair_on`` and one
    column per metric."""
    if not 0 < alpha < 1:
        raise MixcliError(f"--alpha {alpha}: expected a level in (0, 1), e.g. 0.05")
    groups = {(g if isinstance(g, tuple) else (g,)): df for g, df in values.groupby(by, sort=False, dropna=False)}
    keys = {g: dict(zip(by, g)) for g in groups}
    base_of = find_baselines(labels, keys, against)
    rows = []
    for g, df in groups.items():
        bg = base_of.get(g)
        if bg is None or bg == g:
            continue
        base = groups[bg]
        for m in metrics:
            hib = METRICS[m].higher_is_better
            x = df.dropna(subset=[m])
            b = base.dropna(subset=[m])
            if x.empty or b.empty:
                continue
            kx = x[pair_on].astype(str).agg("|".join, axis=1)
            kb = b[pair_on].astype(str).agg("|".join, axis=1)
            if kx.is_unique and kb.is_unique and set(kx) == set(kb):
                xs = pd.Series(x[m].to_numpy(), index=kx.to_numpy())
                bs = pd.Series(b[m].to_numpy(), index=kb.to_numpy()).reindex(xs.index)
                s = paired_stats(xs.to_numpy(), bs.to_numpy(), hib, alpha)
            else:
                s = welch_stats(x[m].to_numpy(), b[m].to_numpy(), alpha)
            sig = None if s["t_p"] is None else bool(s["t_p"] < alpha)
            rows.append(PairedRow(group=keys[g], baseline=keys[bg], metric=m, mean=float(x[m].mean()),
                                  baseline_mean=float(b[m].mean()), significant=sig, **s))
    return rows
