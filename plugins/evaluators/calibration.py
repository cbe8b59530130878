"""Calibration beyond the 15-bin ECE: temperature scaling and equal-mass (adaptive) ECE."""
from __future__ import annotations

import json

import numpy as np

from mixcli.api import EvalContext, Evaluator, PluginError, metric, write_artifact
from mixcli.api import adaptive_ece, confidences, ece, fit_temperature

ARTIFACT = "calibration.json"
#: more bins than this leave most of them empty on any test split (10,000 CIFAR images: 10 per bin at 1000)
#: and the ECE estimate is all noise; ``mixcli reliability`` reads at most this many
MAX_BINS = 1000


def bin_sums(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, list[float]]:
    """Per equal-width bin ``(b/n, (b+1)/n]``: count, sum of confidences, sum of correct (the ECE's bins)."""
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return {"count": np.bincount(idx, minlength=n_bins).astype(float).tolist(),
            "conf": np.bincount(idx, weights=conf, minlength=n_bins).tolist(),
            "correct": np.bincount(idx, weights=correct, minlength=n_bins).tolist()}


class Calibration(Evaluator):
    """ECE after temperature scaling (T fitted on the validation split) and equal-mass (adaptive) ECE.

    ``T* = argmin_T NLL(softmax(z_val / T), y_val)`` (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern
    Neural Networks", ICML 2017; fitted exactly, see :func:`mixcli.metrics.fit_temperature`); on the test
    split: ``ts_ece`` (the 15-bin ECE of ``softmax(z / T*)``), ``ts_nll``, ``adaptive_ece`` (equal-mass bins,
    Nguyen & O'Connor 2015, the adaptive ECE of Mukhoti et al. 2020) before and ``ts_adaptive_ece`` after
    scaling. The 15-bin ECE before scaling is the built-in ``ece``. The fitted T and the per-bin counts before
    and after scaling go to ``OUT/jobs/<run_id>/calibration.json``, which ``mixcli reliability`` draws as a
    reliability diagram. Needs a validation split (``val_size > 0``).
    """

    paper = "Guo et al., On Calibration of Modern Neural Networks, ICML 2017"
    metrics = (metric("ts_ece", False, percent=True, doc="15-bin ECE after temperature scaling fitted on val"),
               metric("ts_nll", False, doc="test NLL after temperature scaling fitted on val"),
               metric("adaptive_ece", False, percent=True, doc="equal-mass 15-bin ECE (sorted confidences)"),
               metric("ts_adaptive_ece", False, percent=True, doc="equal-mass ECE after temperature scaling"))

    def __init__(self, bins: int = 15):
        if not isinstance(bins, int) or isinstance(bins, bool) or not 1 <= bins <= MAX_BINS:
            raise PluginError(f"bins must be an integer from 1 to {MAX_BINS} (more leaves most bins empty), "
                              f"got {bins!r}")
        self.bins = bins

    def check_config(self, config: dict, dataset) -> None:
        ds = config.get("dataset") or {}
        for key in ("val_size", "n_val"):  # the validation split's size, as the built-in datasets name it
            if ds.get(key) == 0:
                raise PluginError(f"calibration fits the temperature on the validation split, and dataset.{key} "
                                  f"is 0; give the dataset a {key} > 0")

    def check(self, data) -> None:
        if data.val is None or len(data.val) == 0:
            raise PluginError("calibration fits the temperature on the validation split, and this dataset has "
                              "none; give the dataset a val_size > 0")

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        zv, yv = ctx.predict(model, "val")
        zt, yt = ctx.predict(model, "test")
        zv, yv, zt, yt = (a.cpu().double().numpy() for a in (zv, yv, zt, yt))
        t = fit_temperature(zv, yv)
        conf, correct = confidences(zt, yt)
        conf_t, _ = confidences(zt / t, yt)  # scaling keeps the argmax, so `correct` is unchanged
        zs = zt / t
        zs = zs - zs.max(axis=1, keepdims=True)
        logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
        out = {"ts_ece": ece(conf_t, correct, self.bins),
               "ts_nll": float(-logp[np.arange(len(yt)), yt.astype(np.int64)].mean()),
               "adaptive_ece": adaptive_ece(conf, correct, self.bins),
               "ts_adaptive_ece": adaptive_ece(conf_t, correct, self.bins)}
        if ctx.artifacts_dir is not None:
            doc = {"epoch": ctx.epoch, "temperature": t, "bins": self.bins, "n": int(len(yt)),
                   "ece": ece(conf, correct, self.bins), "ts_ece": out["ts_ece"],
                   "before": bin_sums(conf, correct, self.bins), "after": bin_sums(conf_t, correct, self.bins)}
            write_artifact(ctx.artifacts_dir, ARTIFACT, json.dumps(doc))
        return out
