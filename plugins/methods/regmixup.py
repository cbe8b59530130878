"""RegMixup (Pinto, Yang, Lim, Torr, Dokania, NeurIPS 2022)."""
import torch

from mixcli.api import (Batch, Context, Method, MixOutput, Model, check_range, interpolate, lam_tensor, permutation,
                        soft_cross_entropy, soft_targets)


class RegMixup(Method):
    """RegMixup: clean cross-entropy plus eta times the mixup cross-entropy (mixup as a regulariser).

    Pinto, Yang, Lim, Torr, Dokania, "Using Mixup as a Regularizer Can Surprisingly Improve Accuracy and
    Out-of-Distribution Robustness", NeurIPS 2022 (reference: ``FrancescoPinto/RegMixup``).

        lam ~ Beta(alpha, alpha) per batch;  x~ = lam x + (1 - lam) x[perm]
        L_sum = CE(f(x), y) + eta * [lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[perm])]   (the paper, eq. 2)
        L     = L_sum / (1 + eta)                                           (default: the reference code)

    One forward over the concatenated batch [x; x~] (BatchNorm sees both, as in the reference). Defaults:
    alpha 20 (the paper's CIFAR-10 value; use 10 for CIFAR-100), eta 1. The reference code takes one mean
    cross-entropy over the 2B concatenated rows (targets [y; y] and [y; y[perm]] weighted lam, 1 - lam), i.e.
    L_sum / 2 at eta = 1 (it has no eta). That is the default, ``average: true`` (L_sum / (1 + eta) for any
    eta), so that RegMixup trains at the same effective learning rate as every other method. ``average:
    false`` is the paper's sum, twice the reference's loss and gradient at eta = 1. The method sets
    ``MixOutput.loss`` itself (the configured loss plugin is not used) and reports the clean logits, with
    the unmixed labels.
    """

    family = "loss"
    tasks = ("classification",)
    paper = "Pinto et al., Using Mixup as a Regularizer, NeurIPS 2022"
    needs = ("class_labels",)  # its own loss reads the class ids

    def __init__(self, alpha: float = 20.0, eta: float = 1.0, average: bool = True, label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("eta", eta, 0)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.eta, self.average, self.smoothing = alpha, eta, average, label_smoothing

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y = batch.x, batch.y
        n = x.shape[0]
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        perm = permutation(ctx, n)
        lam_t = lam_tensor(lam, n, x.device)
        logits = model(torch.cat([x, interpolate(x, perm, lam_t)]))
        clean = MixOutput.unmixed(logits[:n], y, self.smoothing)
        mixed = MixOutput(logits[n:], y, y[perm], lam_t, self.smoothing)
        k = ctx.num_classes
        loss = soft_cross_entropy(clean.logits, soft_targets(clean, k)) + \
            self.eta * soft_cross_entropy(mixed.logits, soft_targets(mixed, k))
        clean.loss = loss / (1 + self.eta) if self.average else loss
        return clean
