"""Every evaluation metric of mixcli, defined once (numpy, float64, CPU).

Inputs may be torch tensors (on any device, any float dtype: moved to CPU and cast to float64) or numpy
arrays. ``percent`` in :data:`METRICS` means reports show ``value * 100``.

Classification (:func:`classification_metrics`; ``p = softmax(logits)``, ``yhat = argmax`` (ties: lowest
index), ``N`` examples, ``K`` classes)
----------------------------------------------------------------------------------------------------------
- ``accuracy``: ``mean(yhat == y)``.
- ``nll``: ``mean(-log p[y])`` with a stable log-softmax (natural log).
- ``ece``: expected calibration error, 15 equal-width bins over [0, 1] on the confidence ``c = max p``.
  Bin ``b`` (0..14) holds ``b/15 < c <= (b+1)/15``; ``c == 0`` goes to bin 0, i.e.
  ``b = clip(ceil(15 c) - 1, 0, 14)``. ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` (empty bins add 0).
- Confusion matrix ``C`` (K x K), jointly normalised: ``C_ij = P(y = i, yhat = j)`` (:func:`confusion_matrix`).
  Recall ``R_i = C_ii / sum_j C_ij``; coverage ``cov_j = sum_i C_ij`` (how often class ``j`` is predicted).
  Classes absent from ``labels`` have no recall (NaN in ``per_class_recall``) and are left out of every
  recall-based metric below; ``K'`` is the number of classes present.
- ``mean_recall``: ``mean_i R_i`` (balanced accuracy).
- ``worst_class_recall``: ``min_i R_i``.
- ``min_ht_recall``: ``min(mean recall of head classes, mean recall of tail classes)``. Classes are ordered
  by ``class_counts`` (training frequency) descending, ties by class index; without ``class_counts`` the
  order is 0..K-1 (class 0 most frequent, the long-tail convention). Head = the first
  ``ceil(head_fraction * K)`` classes, clamped to [1, K-1]; tail = the rest (SelMix: head_fraction=0.9,
  so K=10 gives 9 head / 1 tail, K=100 gives 90 / 10). A group with no class present is ignored; K=1
  gives ``mean_recall``.
- ``gmean``: ``(prod_i R_i)^(1/K')``, via logs; 0 if any ``R_i = 0``.
- ``hmean``: ``K' / sum_i (1/R_i)``; 0 if any ``R_i = 0``.
- ``min_coverage``: ``min_j cov_j`` over all K classes, a fraction. SelMix's coverage constraint is
  ``cov_j >= alpha / K`` (``coverage_alpha``, default 0.95); compare ``min_coverage`` with ``alpha / K``.
- Lists (not in :data:`METRICS`, they are not scalars): ``per_class_recall`` (K floats, NaN for absent
  classes) and ``per_class_coverage`` (K floats).

Evaluator metrics (functions here, declared by the evaluator plugins that report them)
----------------------------------------------------------------------------------------------------------
- :func:`adaptive_ece`: equal-mass ECE (Nguyen & O'Connor 2015; "adaptive" ECE of Mukhoti et al. 2020): the
  examples sorted by confidence ``c = max p`` (stable sort) are split into ``n_bins`` consecutive groups of
  sizes differing by at most one (``numpy.array_split``: the first ``N mod n_bins`` groups get one more);
  ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.
- :func:`fit_temperature`: temperature scaling (Guo et al. 2017): ``T* = argmin_T mean(-log softmax(z/T)[y])``
  on the given (validation) logits. The NLL is convex in ``beta = 1/T`` (its second derivative is the
  variance of ``z`` under ``softmax(beta z)``), so ``T*`` is found exactly by bisection on the derivative
  ``mean(E_softmax(beta z)[z] - z_y)``, with ``T`` kept in [0.01, 100] (the reference code, gpleiss/
  temperature_scaling, runs L-BFGS on T from 1.5 to the same minimum).
- OOD detection (in-distribution = positive class, higher score = more in-distribution):
  :func:`auroc` ``= P(s_in > s_out) + P(s_in = s_out) / 2`` (Mann-Whitney); :func:`aupr` = average precision
  with ID as positive (AUPR-In; ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, scikit-learn's
  definition); :func:`fpr_at_tpr` (FPR95) ``= mean(s_out >= t)`` with ``t`` the ``ceil(0.95 n_in)``-th largest
  ID score, i.e. the highest threshold that keeps at least 95% of ID examples.

Regression (:func:`regression_metrics`; ``pred``, ``target`` of shape (N,) or (N, D), (N,) read as (N, 1))
----------------------------------------------------------------------------------------------------------
- ``rmse``: ``sqrt(mean((pred - target)^2))`` over all N*D entries.
- ``mape``: ``100 * mean(|pred - target| / |target|)`` over entries with ``target != 0`` (already in %;
  NaN if every target is 0).
- ``pearson_r``: Pearson correlation of pred and target per output dimension, averaged over dimensions
  whose target is not constant (NaN if none). A constant prediction in such a dimension counts as r = 0.
- ``worst_domain_rmse``: ``max_d rmse(examples of domain d)``; only returned when ``domain`` (N,) is given
  and has at least 2 distinct values.
"""
from __future__ import annotations

import functools

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["MetricInfo", "METRICS", "classification_metrics", "regression_metrics", "confusion_matrix",
           "ece", "adaptive_ece", "fit_temperature", "auroc", "aupr", "fpr_at_tpr", "confidences"]

ECE_BINS = 15


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is read: its direction, display scale (``percent``: show value*100), task and definition."""

    name: str
    higher_is_better: bool
    percent: bool
    task: Literal["classification", "regression"]
    doc: str


def _info(name, higher, percent, task, doc):
    return name, MetricInfo(name, higher, percent, task, doc)


METRICS: dict[str, MetricInfo] = dict([
    _info("accuracy", True, True, "classification", "mean(argmax(logits) == label)"),
    _info("nll", False, False, "classification", "mean negative log softmax probability of the true label"),
    _info("ece", False, True, "classification",
          "expected calibration error, 15 equal-width bins (b/15, (b+1)/15] on max softmax probability"),
    _info("mean_recall", True, True, "classification", "mean per-class recall over classes present (balanced accuracy)"),
    _info("worst_class_recall", True, True, "classification", "minimum per-class recall over classes present"),
    _info("min_ht_recall", True, True, "classification",
          "min(mean head recall, mean tail recall); head = first ceil(0.9 K) classes by training frequency"),
    _info("gmean", True, True, "classification", "geometric mean of per-class recalls (0 if any is 0)"),
    _info("hmean", True, True, "classification", "harmonic mean of per-class recalls (0 if any is 0)"),
    _info("min_coverage", True, True, "classification",
          "min_j P(yhat = j); SelMix requires >= alpha/K"),
    _info("rmse", False, False, "regression", "sqrt(mean((pred - target)^2)) over all entries"),
    _info("mape", False, False, "regression", "100 * mean(|pred - target| / |target|) over entries with target != 0"),
    _info("pearson_r", True, False, "regression",
          "Pearson r per output dimension, averaged over dimensions with non-constant target"),
    _info("worst_domain_rmse", False, False, "regression", "max over domains of the per-domain rmse"),
])


def _float(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here: reports start without it)
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _int(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.size and not np.issubdtype(x.dtype, np.integer):
        if not np.all(x == np.round(x)):
            raise ValueError("labels must be integers")
    return x.astype(np.int64).reshape(-1)


def confusion_matrix(preds, labels, num_classes: int) -> np.ndarray:
    """Jointly normalised K x K confusion matrix, ``C[i, j] = P(label = i, pred = j)`` (all zeros if empty)."""
    preds, labels = _int(preds), _int(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in length")
    for name, v in (("preds", preds), ("labels", labels)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{v.min()}, {v.max()}]")
    counts = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    return counts / max(len(labels), 1)


def _ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |sum_{B_b} correct - sum_{B_b} conf| / N
    return float(np.abs(acc_sum - conf_sum).sum() / len(conf))


def _head_count(head_fraction: float, k: int) -> int:
    # the epsilon keeps e.g. 0.7 * 10 = 7.000000000000001 from rounding up to 8
    return min(max(math.ceil(head_fraction * k - 1e-9), 1), k - 1)


def classification_metrics(logits, labels, num_classes: int | None = None, class_counts=None,
                           head_fraction: float = 0.9, coverage_alpha: float = 0.95) -> dict[str, float | list[float]]:
    """All classification metrics of ``logits`` (N, K) against int ``labels`` (N,); see the module docstring.

    ``class_counts`` (K,) are the training-set class sizes that define head and tail for ``min_ht_recall``.
    ``coverage_alpha`` is SelMix's coverage threshold (``cov_j >= alpha / K``); it is validated only, the
    raw ``min_coverage`` is what is returned.
    """
    logits = _float(logits)
    labels = _int(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    n, k_logits = logits.shape
    k = k_logits if num_classes is None else int(num_classes)
    if k != k_logits:
        raise ValueError(f"num_classes={k} but logits have {k_logits} columns")
    if len(labels) != n or n == 0:
        raise ValueError(f"need as many labels as logits rows (and at least one), got {len(labels)} and {n}")
    if not 0 < coverage_alpha <= 1:
        raise ValueError(f"coverage_alpha must be in (0, 1], got {coverage_alpha}")
    if not 0 < head_fraction <= 1:
        raise ValueError(f"head_fraction must be in (0, 1], got {head_fraction}")

    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)   # exact 1/K for uniform logits (matters for bin edges)
    log_probs = shifted - np.log(exp.sum(axis=1, keepdims=True))
    preds = logits.argmax(axis=1)
    correct = (preds == labels).astype(np.float64)
    cm = confusion_matrix(preds, labels, k)

    support = cm.sum(axis=1)
    present = support > 0
    recall = np.full(k, np.nan)
    recall[present] = np.diag(cm)[present] / support[present]
    r = recall[present]
    coverage = cm.sum(axis=0)

    order = np.arange(k) if class_counts is None else np.argsort(-_float(class_counts), kind="stable")
    if class_counts is not None and len(order) != k:
        raise ValueError(f"class_counts has {len(order)} entries, expected {k}")
    if k == 1:
        min_ht = float(r.mean())
    else:
        h = _head_count(head_fraction, k)
        groups = [recall[order[:h]], recall[order[h:]]]
        means = [g[~np.isnan(g)].mean() for g in groups if (~np.isnan(g)).any()]
        min_ht = float(min(means))

    any_zero = bool((r == 0).any())
    return {
        "accuracy": float(correct.mean()),
        "nll": float(-log_probs[np.arange(n), labels].mean()),
        "ece": _ece(probs.max(axis=1), correct),
        "mean_recall": float(r.mean()),
        "worst_class_recall": float(r.min()),
        "min_ht_recall": min_ht,
        "gmean": 0.0 if any_zero else float(np.exp(np.log(r).mean())),
        "hmean": 0.0 if any_zero else float(len(r) / (1.0 / r).sum()),
        "min_coverage": float(coverage.min()),
        "per_class_recall": [float(v) for v in recall],
        "per_class_coverage": [float(v) for v in coverage],
    }


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(err ** 2)))


def regression_metrics(pred, target, domain=None) -> dict[str, float]:
    """Regression metrics of ``pred`` against ``target`` ((N,) or (N, D)); see the module docstring."""
    pred, target = _float(pred), _float(target)
    if pred.shape[:1] != target.shape[:1] or not (1 <= pred.ndim <= 2 and 1 <= target.ndim <= 2):
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be (N,) or (N, D) with the same N")
    pred, target = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    if pred.shape != target.shape or pred.size == 0:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must match and be non-empty")
    err = pred - target

    nz = target != 0
    mape = float(100 * np.mean(np.abs(err[nz]) / np.abs(target[nz]))) if nz.any() else float("nan")

    varying = target.max(axis=0) != target.min(axis=0)
    if varying.any():
        p, t = pred[:, varying], target[:, varying]
        pc, tc = p - p.mean(axis=0), t - t.mean(axis=0)
        den = np.sqrt((pc ** 2).sum(axis=0) * (tc ** 2).sum(axis=0))
        num = (pc * tc).sum(axis=0)
        r = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        pearson = float(np.clip(r, -1.0, 1.0).mean())
    else:
        pearson = float("nan")

    out = {"rmse": _rmse(err), "mape": mape, "pearson_r": pearson}
    if domain is not None:
        domain = _int(domain)
        if len(domain) != len(pred):
            raise ValueError(f"domain has {len(domain)} entries, expected {len(pred)}")
        ids = np.unique(domain)
        if len(ids) >= 2:
            out["worst_domain_rmse"] = max(_rmse(err[domain == d]) for d in ids)
    return out


# ------------------------------------------------------------------------------------- evaluator metrics
def confidences(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(max softmax probability, 1.0 where argmax == label)`` per row, float64."""
    z = _float(logits)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.max(axis=1), (z.argmax(axis=1) == _int(labels)).astype(np.float64)


def ece(conf, correct, n_bins: int = ECE_BINS) -> float:
    """The equal-width ECE of ``classification_metrics`` (bins ``(b/n, (b+1)/n]``) from confidences."""
    return _ece(_float(conf), _float(correct), n_bins)


def adaptive_ece(conf, correct, n_bins: int = ECE_BINS) -> float:
    """Equal-mass ECE: ``n_bins`` consecutive groups of the confidence-sorted examples (module docstring)."""
    conf, correct = _float(conf), _float(correct)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for idx in np.array_split(order, n_bins):
        if len(idx):
            total += abs(correct[idx].sum() - conf[idx].sum())
    return float(total / len(conf))


def _nll_slope(beta: float, z: np.ndarray, zy: np.ndarray) -> float:
    """d/d beta of mean(logsumexp(beta z) - beta z_y) = mean(E_softmax(beta z)[z] - z_y)."""
    a = beta * z
    a -= a.max(axis=1, keepdims=True)
    p = np.exp(a)
    p /= p.sum(axis=1, keepdims=True)
    return float(((p * z).sum(axis=1) - zy).mean())


def fit_temperature(logits, labels, t_min: float = 0.01, t_max: float = 100.0) -> float:
    """The temperature minimizing the NLL of ``softmax(logits / T)`` (module docstring), in [t_min, t_max]."""
    z, y = _float(logits), _int(labels)
    zy = z[np.arange(len(y)), y]
    lo, hi = math.log(1.0 / t_max), math.log(1.0 / t_min)  # log beta
    if _nll_slope(math.exp(lo), z, zy) >= 0:
        return t_max
    if _nll_slope(math.exp(hi), z, zy) <= 0:
        return t_min
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _nll_slope(math.exp(mid), z, zy) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / math.exp(0.5 * (lo + hi)))


def _binary(score_in, score_out) -> tuple[np.ndarray, np.ndarray]:
    s_in, s_out = _float(score_in).reshape(-1), _float(score_out).reshape(-1)
    if not len(s_in) or not len(s_out):
        raise ValueError("need at least one in-distribution and one out-of-distribution score")
    return s_in, s_out


def auroc(score_in, score_out) -> float:
    """``P(s_in > s_out) + P(s_in = s_out) / 2`` via average ranks (ties share their mean rank)."""
    s_in, s_out = _binary(score_in, score_out)
    s = np.concatenate([s_in, s_out])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    n1, n0 = len(s_in), len(s_out)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def aupr(score_in, score_out) -> float:
    """Average precision with in-distribution as the positive class: ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds, highest first."""
    s_in, s_out = _binary(score_in, score_out)
    s = np.concatenate([s_in, s_out])
    pos = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each group of equal scores
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(1 - pos)[last]
    precision = tp / (tp + fp)
    recall = tp / len(s_in)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(score_in, score_out, tpr: float = 0.95) -> float:
    """Fraction of OOD scores ``>= t``, ``t`` the ``ceil(tpr * n_in)``-th largest in-distribution score."""
    s_in, s_out = _binary(score_in, score_out)
    k = max(1, math.ceil(tpr * len(s_in) - 1e-9))
    t = np.sort(s_in)[::-1][k - 1]
    return float((s_out >= t).mean())


# ------------------------------------------------- declared metrics of evaluator plugins (loaded lazily)
@functools.lru_cache(maxsize=None)
def evaluator_metrics() -> dict[str, MetricInfo]:
    """Every metric declared by an installed evaluator that loads (broken plugins are skipped here and
    reported when used). A name that clashes with a built-in metric or an earlier evaluator's is skipped
    (:func:`metric_clashes` reports it when the evaluator is used)."""
    from .errors import MixcliError
    from .registry import REGISTRY

    out: dict[str, MetricInfo] = {}
    for name in REGISTRY.names("evaluators"):
        try:
            cls = REGISTRY.get("evaluators", name)
        except MixcliError:
            continue
        for info in getattr(cls, "metrics", ()):
            if isinstance(info, MetricInfo) and info.name not in METRICS and info.name not in out:
                out[info.name] = info
    return out


def metric_clashes(name: str, cls) -> str | None:
    """Why evaluator ``name`` cannot record its metrics (a bad or clashing declaration), or None."""
    from .errors import MixcliError
    from .registry import REGISTRY

    infos = getattr(cls, "metrics", ())
    if not infos or not all(isinstance(i, MetricInfo) for i in infos):
        return f"evaluator '{name}' declares no metrics (a tuple of mixcli.api.metric(...) in 'metrics')"
    owners = {}
    for other in REGISTRY.names("evaluators"):
        if other == name:
            continue
        try:
            ocls = REGISTRY.get("evaluators", other)
        except MixcliError:
            continue
        owners.update({i.name: other for i in getattr(ocls, "metrics", ()) if isinstance(i, MetricInfo)})
    for info in infos:
        if info.name in METRICS:
            return f"evaluator '{name}' declares metric '{info.name}', which is a built-in metric"
        if info.name in owners and evaluator_metrics().get(info.name) is not info:
            return f"evaluator '{name}' declares metric '{info.name}', already declared by '{owners[info.name]}'"
    return None


def all_metrics() -> dict[str, MetricInfo]:
    """The built-in metrics (:data:`mixcli.metrics.METRICS`) and every installed evaluator's."""
    return {**METRICS, **evaluator_metrics()}


def metric_info(name: str) -> MetricInfo:
    """A metric's declaration: a built-in one without loading any plugin, else an evaluator's (KeyError if
    unknown). Reports use this so that a table of built-in metrics never imports the evaluator plugins
    (nor torch)."""
    return METRICS[name] if name in METRICS else evaluator_metrics()[name]


def known_metric(name: str) -> bool:
    return name in METRICS or name in evaluator_metrics()
