"""mixcli.metrics checked against independent computations (sklearn, scipy, plain Python loops)."""
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import sklearn.metrics as skm
import torch

from mixcli.metrics import METRICS, MetricInfo, classification_metrics, confusion_matrix, regression_metrics


def _random_case(seed, n=400, k=7, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(n, k))
    labels = rng.integers(0, k, size=n)
    logits[np.arange(n), labels] += rng.uniform(0, 2, size=n)  # better than chance, not perfect
    return logits, labels


def _ece_loop(probs, labels, n_bins=15):
    """Per-sample reference: bin b holds confidences in (b/15, (b+1)/15], confidence 0 in bin 0."""
    bins = [[] for _ in range(n_bins)]
    for p, y in zip(probs, labels):
        c = max(p)
        pred = list(p).index(c)
        b = 0
        for j in range(n_bins):
            if j / n_bins < c <= (j + 1) / n_bins:
                b = j
                break
        bins[b].append((c, pred == y))
    total = 0.0
    for members in bins:
        if members:
            acc = sum(ok for _, ok in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(labels) * abs(acc - conf)
    return total


# ------------------------------------------------------------------------------------------- registry
def test_metrics_registry():
    cls = {"accuracy", "nll", "ece", "mean_recall", "worst_class_recall", "min_ht_recall", "gmean", "hmean",
           "min_coverage"}
    reg = {"rmse", "mape", "pearson_r", "worst_domain_rmse"}
    assert set(METRICS) == cls | reg
    for name, info in METRICS.items():
        assert isinstance(info, MetricInfo) and info.name == name and info.doc
        assert info.task == ("classification" if name in cls else "regression")
    assert not METRICS["nll"].higher_is_better and not METRICS["ece"].higher_is_better
    assert not METRICS["rmse"].higher_is_better and not METRICS["mape"].higher_is_better
    assert METRICS["pearson_r"].higher_is_better and not METRICS["mape"].percent
    with pytest.raises(Exception):
        METRICS["accuracy"].percent = False  # frozen

    logits, labels = _random_case(0)
    scalars = {k for k, v in classification_metrics(logits, labels).items() if not isinstance(v, list)}
    assert scalars == cls
    out = regression_metrics(np.arange(4.0), np.arange(4.0) + 1, domain=[0, 0, 1, 1])
    assert set(out) == reg


# ------------------------------------------------------------------------------------- classification
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_accuracy_nll_ece_vs_independent(seed):
    logits, labels = _random_case(seed)
    k = logits.shape[1]
    m = classification_metrics(logits, labels)
    probs = scipy.special.softmax(logits, axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)), abs=1e-12)
    assert m["nll"] == pytest.approx(skm.log_loss(labels, probs, labels=list(range(k))), rel=1e-9)
    assert m["ece"] == pytest.approx(_ece_loop(probs, labels), abs=1e-12)
    assert 0 <= m["ece"] <= 1


def test_nll_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    m = classification_metrics(logits, [0, 0])
    assert math.isfinite(m["nll"]) and m["nll"] == pytest.approx(500.0)


def test_ece_hand_built():
    big = np.array([[50.0, 0.0], [0.0, 50.0]] * 5)  # confidence 1.0 (to float precision)
    labels_all = np.array([0, 1] * 5)
    assert classification_metrics(big, labels_all)["ece"] == pytest.approx(0.0, abs=1e-12)
    labels_half = np.array([0, 1, 0, 1, 0] * 2)  # predictions alternate 0, 1: first 5 right, last 5 wrong
    assert classification_metrics(big, labels_half)["accuracy"] == 0.5
    assert classification_metrics(big, labels_half)["ece"] == pytest.approx(0.5, abs=1e-12)


def test_ece_bin_edge_goes_to_lower_bin():
    # Uniform logits with K=3 give confidence exactly 1/3 = 5/15, an edge: it belongs to bin 4 = (4/15, 5/15].
    # A second sample with confidence in (5/15, 6/15] sits in bin 5. Separate bins -> 1/2*(2/3) + 1/2*c;
    # had the edge gone to bin 5 they would share a bin and give |1/2 - (1/3 + c)/2|.
    second = np.array([0.0, np.log(0.38 / 0.31), 0.0])  # softmax ~ (0.31, 0.38, 0.31)
    logits = np.stack([np.zeros(3), second])
    labels = np.array([0, 0])  # first: argmax tie -> class 0, correct; second: predicts 1, wrong
    c = scipy.special.softmax(second).max()
    assert 5 / 15 < c <= 6 / 15
    m = classification_metrics(logits, labels)
    assert m["ece"] == pytest.approx(0.5 * (1 - 1 / 3) + 0.5 * c, abs=1e-12)
    assert m["ece"] == pytest.approx(_ece_loop(scipy.special.softmax(logits, axis=1), labels), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_recalls_coverage_vs_sklearn(seed):
    logits, labels = _random_case(seed, n=300, k=6)
    k = 6
    preds = logits.argmax(1)
    m = classification_metrics(logits, labels)
    rec = skm.recall_score(labels, preds, average=None, labels=list(range(k)), zero_division=0)
    np.testing.assert_allclose(m["per_class_recall"], rec, atol=1e-12)
    assert m["mean_recall"] == pytest.approx(skm.balanced_accuracy_score(labels, preds), abs=1e-12)
    assert m["worst_class_recall"] == pytest.approx(rec.min(), abs=1e-12)
    assert m["gmean"] == pytest.approx(scipy.stats.gmean(rec), rel=1e-10)
    assert m["hmean"] == pytest.approx(scipy.stats.hmean(rec), rel=1e-10)
    sk_cm = skm.confusion_matrix(labels, preds, labels=list(range(k)), normalize="all")
    np.testing.assert_allclose(confusion_matrix(preds, labels, k), sk_cm, atol=1e-12)
    np.testing.assert_allclose(m["per_class_coverage"], sk_cm.sum(axis=0), atol=1e-12)
    assert m["min_coverage"] == pytest.approx(sk_cm.sum(axis=0).min(), abs=1e-12)
    assert sum(m["per_class_coverage"]) == pytest.approx(1.0)


def _logits_for(preds, k):
    return np.eye(k)[preds] * 5.0


def test_zero_recall_gives_zero_means_and_absent_classes_are_excluded():
    k = 4
    labels = np.array([0, 0, 1, 1, 2, 2])  # class 3 absent
    preds = np.array([0, 0, 1, 0, 3, 3])   # class 2 recall 0
    m = classification_metrics(_logits_for(preds, k), labels)
    assert m["per_class_recall"][:3] == [1.0, 0.5, 0.0] and math.isnan(m["per_class_recall"][3])
    assert m["mean_recall"] == pytest.approx(0.5)
    assert m["worst_class_recall"] == 0.0 and m["gmean"] == 0.0 and m["hmean"] == 0.0
    assert m["per_class_coverage"] == pytest.approx([3 / 6, 1 / 6, 0.0, 2 / 6])
    assert m["min_coverage"] == 0.0

    preds2 = np.array([0, 0, 1, 0, 2, 3])   # recalls 1, .5, .5 over present classes
    m2 = classification_metrics(_logits_for(preds2, k), labels)
    assert m2["gmean"] == pytest.approx(scipy.stats.gmean([1, 0.5, 0.5]))
    assert m2["hmean"] == pytest.approx(scipy.stats.hmean([1, 0.5, 0.5]))


def test_min_ht_recall_hand_built():
    k = 10
    # 10 examples per class; class c predicted correctly (10 - c) times -> recall (10 - c) / 10
    labels = np.repeat(np.arange(k), 10)
    within = np.tile(np.arange(10), k)
    preds = np.where(within < 10 - labels, labels, (labels + 1) % k)
    recall = (10 - np.arange(k)) / 10
    m = classification_metrics(_logits_for(preds, k), labels)
    np.testing.assert_allclose(m["per_class_recall"], recall)
    # default order 0..9: head = classes 0..8, tail = class 9
    assert m["min_ht_recall"] == pytest.approx(min(recall[:9].mean(), recall[9]))  # = 0.1
    # training counts make class 0 the rarest: head = classes 9..1, tail = class 0 (recall 1.0)
    counts = np.arange(k) + 1
    m2 = classification_metrics(_logits_for(preds, k), labels, class_counts=counts)
    assert m2["min_ht_recall"] == pytest.approx(min(recall[1:].mean(), recall[0]))
    # head_fraction 0.5 with the default order: head 0..4, tail 5..9
    m3 = classification_metrics(_logits_for(preds, k), labels, head_fraction=0.5)
    assert m3["min_ht_recall"] == pytest.approx(min(recall[:5].mean(), recall[5:].mean()))
    # 0.7 * 10 is 7.000000000000001 in floating point: still 7 head classes
    m4 = classification_metrics(_logits_for(preds, k), labels, head_fraction=0.7)
    assert m4["min_ht_recall"] == pytest.approx(min(recall[:7].mean(), recall[7:].mean()))


def test_torch_and_numpy_inputs_identical():
    logits, labels = _random_case(3, n=200, k=5)
    a = classification_metrics(logits, labels, class_counts=[5, 4, 3, 2, 1])
    b = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels),
                               class_counts=torch.tensor([5, 4, 3, 2, 1]))
    assert a == b
    l32 = logits.astype(np.float32)
    assert classification_metrics(l32, labels) == classification_metrics(torch.from_numpy(l32), torch.from_numpy(labels))
    if torch.cuda.is_available():
        c = classification_metrics(torch.from_numpy(logits).cuda(), torch.from_numpy(labels).cuda(),
                                   class_counts=[5, 4, 3, 2, 1])
        assert c == a

    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    p = y + rng.normal(scale=0.3, size=(50, 3))
    d = rng.integers(0, 3, size=50)
    assert regression_metrics(p, y, d) == regression_metrics(torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(d))


def test_classification_bad_inputs():
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((2, 2)), [0, 1], num_classes=3)


# ----------------------------------------------------------------------------------------- regression
def _ref_regression(p, y, d=None):
    p2, y2 = p.reshape(len(p), -1), y.reshape(len(y), -1)
    out = {"rmse": float(np.sqrt(((p2 - y2) ** 2).mean()))}
    mask = y2 != 0
    out["mape"] = float(np.mean(np.abs(p2[mask] - y2[mask]) / np.abs(y2[mask])) * 100) if mask.any() else float("nan")
    rs = [scipy.stats.pearsonr(p2[:, j], y2[:, j])[0] for j in range(y2.shape[1]) if np.std(y2[:, j]) > 0]
    out["pearson_r"] = float(np.mean(rs)) if rs else float("nan")
    if d is not None and len(set(d.tolist())) >= 2:
        out["worst_domain_rmse"] = max(float(np.sqrt(((p2[d == v] - y2[d == v]) ** 2).mean())) for v in set(d.tolist()))
    return out


def _close(a, b):
    assert set(a) == set(b)
    for key in a:
        if math.isnan(b[key]):
            assert math.isnan(a[key]), key
        else:
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(80,), (80, 1), (80, 4)])
def test_regression_vs_reference(seed, shape):
    rng = np.random.default_rng(seed)
    y = rng.normal(loc=1.0, size=shape)
    p = y + rng.normal(scale=0.5, size=shape)
    d = rng.integers(0, 4, size=shape[0])
    _close(regression_metrics(p, y), _ref_regression(p, y))
    _close(regression_metrics(p, y, domain=d), _ref_regression(p, y, d))


def test_regression_zero_targets_constant_dims_and_single_domain():
    y = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [4.0, 1.0, 0.0], [0.0, 1.0, 5.0]])
    p = y + np.array([[0.5, 0.1, -0.2], [0.1, -0.3, 0.4], [-0.2, 0.0, 0.3], [0.3, 0.2, -0.1]])
    # column 1 is constant: excluded from pearson_r; zeros in targets are excluded from mape
    out = regression_metrics(p, y, domain=np.zeros(4, dtype=int))
    assert "worst_domain_rmse" not in out  # a single domain
    _close(out, _ref_regression(p, y))
    err = np.abs(p - y)[y != 0] / np.abs(y[y != 0])
    assert out["mape"] == pytest.approx(100 * err.mean())

    zeros = regression_metrics(np.ones(5), np.zeros(5))
    assert math.isnan(zeros["mape"]) and math.isnan(zeros["pearson_r"]) and zeros["rmse"] == pytest.approx(1.0)
    # a constant prediction of a varying target: r counts as 0
    assert regression_metrics(np.ones(4), np.arange(4.0))["pearson_r"] == 0.0


def test_worst_domain_hand_built():
    y = np.zeros(6)
    p = np.array([1.0, 1.0, 3.0, 3.0, 0.0, 0.0])
    out = regression_metrics(p, y, domain=[0, 0, 1, 1, 2, 2])
    assert out["worst_domain_rmse"] == pytest.approx(3.0)
    assert out["rmse"] == pytest.approx(math.sqrt((2 + 18) / 6))


def test_regression_bad_shapes():
    with pytest.raises(ValueError):
        regression_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        regression_metrics(np.zeros(4), np.zeros(5))
