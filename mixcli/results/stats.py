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

Several groups against one baseline (the family: every row of one metric that has the same baseline group)
are corrected for multiple comparisons with Holm's step-down method (Holm 1979): with the family's ``m``
t-test p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value is
``holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting every hypothesis with ``holm < alpha`` is
exactly Holm's procedure (it controls the family-wise error rate at ``alpha``). A difference is
*significant* when its Holm-adjusted p-value is below ``alpha`` (with one comparison in the family this is
the t-test's own p-value, and the t interval then excludes 0). With one pair (n=1) there is no standard
error, interval or test (``None``).

Beyond the tests, each row carries (``None`` when ``n < 2``):

- ``boot_low``, ``boot_high``: the percentile bootstrap ``1 - alpha`` interval of ``diff`` over seeds:
  ``B = 9999`` resamples drawn with ``numpy.random.default_rng(0)`` as ``rng.integers(0, n, (B, n))`` (paired:
  the pairs are resampled, i.e. the ``d_s``; Welch: each group independently, the group first), the
  statistic recomputed on each, and the ``alpha/2`` and ``1 - alpha/2`` quantiles of the ``B`` values
  (``numpy.quantile``, linear interpolation). This is ``scipy.stats.bootstrap(method="percentile")`` with the
  same generator; it does not assume normal differences, but with few seeds it is narrower than the t
  interval (it cannot see beyond the seeds it has).
- ``p_beat``: the probability that the group beats the baseline on a paired seed (a new seed, both trained),
  under a normal model of the paired difference: ``Phi(diff / std(d, ddof=1))`` for higher-is-better metrics,
  ``Phi(-diff / std(d))`` for lower-is-better ones (the "common-language effect size" of McGraw & Wong
  1992 for paired data; ``Phi`` the standard normal CDF). W/T/L is the raw count of the same event. For
  Welch rows it is the probability that a run of the group beats an independent run of the baseline,
  ``Phi(+-diff / sqrt(s_x^2 + s_b^2))``. A zero spread gives 1, 0.5 or 0.
- ``seeds_80``: the number of seeds needed to detect the observed difference with 80% power by the same
  two-sided test at ``alpha``, taking the observed difference and spread as the truth. Paired: the smallest
  ``n >= 2`` with ``P(|T| > t_{1-alpha/2, n-1}) >= 0.8`` where ``T`` is noncentral t with ``n - 1`` degrees
  of freedom and noncentrality ``sqrt(n) |diff| / std(d, ddof=1)`` (e.g. 34 for an effect size of 0.5 at
  alpha 0.05, as G*Power gives). Welch rows: seeds per group for the two-sample t-test with the pooled
  spread ``s = sqrt((s_x^2 + s_b^2) / 2)``: ``2n - 2`` degrees of freedom, noncentrality
  ``sqrt(n/2) |diff| / s`` (64 per group for 0.5). ``None`` when the difference is 0; a zero spread with a
  nonzero difference needs 2. Searches stop at :data:`MAX_SEEDS` (then ``None`` and "> 100000").
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import MixcliError, did_you_mean
from ..metrics import metric_info

BOOT_RESAMPLES = 9999
MAX_SEEDS = 100_000
POWER = 0.8


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
    significant: bool | None   # Holm-adjusted p < alpha; None when there is no test (n=1)
    holm_p: float | None = None    # the t-test p-value, Holm-adjusted over the rows with the same baseline and metric
    boot_low: float | None = None  # percentile bootstrap interval of diff over seeds
    boot_high: float | None = None
    p_beat: float | None = None    # P(group beats baseline on a paired seed), normal model of d
    seeds_80: int | None = None    # seeds (pairs, or per group for Welch) for 80% power at the observed effect


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
    sd = float(d.std(ddof=1))
    lo, hi = bootstrap_ci([d], lambda d: d.mean(axis=-1), alpha)
    return {**out, "se": se, "ci_low": out["diff"] - half, "ci_high": out["diff"] + half, "t_p": t_p,
            "wilcoxon_p": w_p, "boot_low": lo, "boot_high": hi,
            "p_beat": prob_beat(out["diff"], sd, higher_is_better),
            "seeds_80": seeds_for_power(out["diff"], sd, alpha, paired=True)}


def welch_stats(x: np.ndarray, b: np.ndarray, alpha: float, higher_is_better: bool = True) -> dict:
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
    lo, hi = bootstrap_ci([x, b], lambda x, b: x.mean(axis=-1) - b.mean(axis=-1), alpha)
    sx, sb = x.var(ddof=1), b.var(ddof=1)
    return {**out, "se": se, "ci_low": out["diff"] - half, "ci_high": out["diff"] + half, "t_p": t_p,
            "boot_low": lo, "boot_high": hi, "p_beat": prob_beat(out["diff"], math.sqrt(sx + sb), higher_is_better),
            "seeds_80": seeds_for_power(out["diff"], math.sqrt((sx + sb) / 2), alpha, paired=False)}


def bootstrap_ci(samples: list[np.ndarray], statistic, alpha: float, resamples: int = BOOT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap ``1 - alpha`` interval of ``statistic(*samples)``, each sample resampled
    independently (in order) with ``rng.integers(0, n, (resamples, n))``, ``rng = default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    boot = []
    for a in samples:
        a = np.asarray(a, float)
        boot.append(a[rng.integers(0, len(a), (resamples, len(a)))])
    theta = np.asarray(statistic(*boot), float)
    lo, hi = np.quantile(theta, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def prob_beat(diff: float, sd: float, higher_is_better: bool) -> float:
    """``Phi(diff / sd)`` in the metric's direction (1, 0.5 or 0 when ``sd`` is 0)."""
    z = diff if higher_is_better else -diff
    if sd == 0 or not math.isfinite(sd):
        return 1.0 if z > 0 else (0.5 if z == 0 else 0.0)
    return float(sps.norm.cdf(z / sd))


def t_power(effect: float, n: int, alpha: float, paired: bool) -> float:
    """Power of the two-sided t-test at ``alpha`` for the standardized effect ``effect`` (|mean| / sd) with
    ``n`` pairs (``paired``) or ``n`` runs per group (two-sample, equal spread)."""
    df, nc = (n - 1, math.sqrt(n) * effect) if paired else (2 * n - 2, math.sqrt(n / 2) * effect)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def seeds_for_power(diff: float, sd: float, alpha: float, paired: bool, power: float = POWER) -> int | None:
    """The smallest ``n >= 2`` whose t-test power reaches ``power`` at the effect ``|diff| / sd`` (module
    docstring); ``None`` for no difference or more than :data:`MAX_SEEDS`."""
    if diff == 0 or not math.isfinite(diff):
        return None
    if sd == 0:
        return 2
    effect = abs(diff) / sd
    if t_power(effect, 2, alpha, paired) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < target; grow hi until power(hi) >= target, then bisect (power rises with n)
    while t_power(effect, hi, alpha, paired) < power:
        lo, hi = hi, hi * 2
        if lo > MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if t_power(effect, mid, alpha, paired) >= power else (mid, hi)
    return hi if hi <= MAX_SEEDS else None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order (module docstring)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


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
            hib = metric_info(m).higher_is_better
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
                s = welch_stats(x[m].to_numpy(), b[m].to_numpy(), alpha, hib)
            rows.append(PairedRow(group=keys[g], baseline=keys[bg], metric=m, mean=float(x[m].mean()),
                                  baseline_mean=float(b[m].mean()), significant=None, **s))
    families: dict[tuple, list[PairedRow]] = {}
    for r in rows:
        if r.t_p is not None:
            families.setdefault((r.metric, tuple(r.baseline.values())), []).append(r)
    for fam in families.values():
        for r, p in zip(fam, holm([r.t_p for r in fam])):
            r.holm_p, r.significant = p, bool(p < alpha)
    return rows
