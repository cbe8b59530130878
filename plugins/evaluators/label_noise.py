"""Label noise: the realised noise rate of the training split and the memorisation of its noisy labels."""
from __future__ import annotations

import torch

from mixcli.api import EvalContext, Evaluator, PluginError, metric


def memorisation(pred: torch.Tensor, y: torch.Tensor, y_clean: torch.Tensor) -> dict[str, float]:
    """Of the training examples whose label was corrupted (``y != y_clean``): the fraction predicted as
    their noisy label (memorised) and as their clean label (still correct); of the others, the fraction
    predicted as their (clean) label; and the realised noise rate. NaN where a group is empty."""
    noisy = y != y_clean
    n_noisy, n_clean = int(noisy.sum()), int((~noisy).sum())
    nan = float("nan")
    return {
        "noise_rate": float(noisy.float().mean()) if len(y) else nan,
        "noisy_memorized": float((pred[noisy] == y[noisy]).float().mean()) if n_noisy else nan,
        "noisy_predicted_clean": float((pred[noisy] == y_clean[noisy]).float().mean()) if n_noisy else nan,
        "clean_train_accuracy": float((pred[~noisy] == y[~noisy]).float().mean()) if n_clean else nan,
    }


class LabelNoise(Evaluator):
    """Memorisation of noisy training labels: how many corrupted examples the model predicts as their noisy
    label, and how many as their clean one.

    Needs the dataset option ``label_noise`` (:mod:`mixcli.data.noise`), which keeps the clean training
    labels. On the training split (not augmented, the model in eval mode), with ``N`` the set of examples
    whose label was corrupted (``y_i != y*_i``) and ``f(x)`` the predicted class:

    - ``noise_rate`` = ``|N| / n``, the realised noise rate (fixed by the noise's seed);
    - ``noisy_memorized`` = ``mean_{i in N} [f(x_i) = y_i]``, the noisy labels fitted;
    - ``noisy_predicted_clean`` = ``mean_{i in N} [f(x_i) = y*_i]``, the true class recovered;
    - ``clean_train_accuracy`` = ``mean_{i not in N} [f(x_i) = y_i]``.

    The memorisation curve per epoch (as in Arazo et al., ICML 2019, Fig. 1; Liu et al., "Early-Learning
    Regularization", NeurIPS 2020, Fig. 1) comes from ``eval.extra_every: 1``; ``mixcli curves --metric
    noisy_memorized`` draws it. Like every evaluator metric the columns are named ``test_<name>``, though
    they are measured on the training split.
    """

    paper = "Arazo et al., Unsupervised Label Noise Modeling and Loss Correction, ICML 2019 (Fig. 1)"
    needs_clean_labels = True
    metrics = (
        metric("noise_rate", False, percent=True, doc="realised fraction of training labels changed by label_noise"),
        metric("noisy_memorized", False, percent=True,
               doc="fraction of noisily labelled training examples predicted as their noisy label"),
        metric("noisy_predicted_clean", True, percent=True,
               doc="fraction of noisily labelled training examples predicted as their clean label"),
        metric("clean_train_accuracy", True, percent=True,
               doc="accuracy on the training examples whose label was not corrupted"),
    )

    def check(self, data) -> None:
        if data.train.y_clean is None:
            raise PluginError("label_noise compares the noisy training labels with the clean ones; give the "
                              "dataset a label_noise option, e.g. label_noise: {kind: symmetric, rate: 0.4}")

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        train = ctx.splits["train"]
        if train.y_clean is None:
            self.check(ctx.data)
        logits, y = ctx.predict(model, "train")
        return memorisation(logits.argmax(1), y, train.y_clean.to(y.device))
