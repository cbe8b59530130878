"""Input mixup (Zhang et al., ICLR 2018)."""
import numpy as np

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, interpolate, lam_tensor,
                        permutation)

LAM_MODES = ("batch", "pair", "elem")


class Mixup(Method):
    """Mixup: train on convex combinations of pairs of inputs and their labels.

    Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018.

        lam ~ Beta(alpha, alpha),  x~ = lam * x_i + (1 - lam) * x_j,  y~ = lam * y_i + (1 - lam) * y_j

    with ``j`` a random permutation of the batch. Options (timm's names):

    - ``alpha`` (1.0): Beta parameter; 0 disables mixing.
    - ``prob`` (1.0): probability that a batch is mixed at all.
    - ``mode`` (batch): one lambda per ``batch``; per ``pair`` (the batch is split into random disjoint pairs
      that share one lambda, both directions); per ``elem`` (one lambda per example).
    - ``label_smoothing`` (0.0): smoothing of each one-hot label before mixing (classification).
    """

    family = "input"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, mode: str = "batch", label_smoothing: float = 0.0):
        if alpha < 0:
            raise PluginError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= prob <= 1:
            raise PluginError(f"prob must be in [0, 1], got {prob}")
        if mode not in LAM_MODES:
            raise PluginError(f"mode must be one of {', '.join(LAM_MODES)}, got {mode!r}")
        if not 0 <= label_smoothing < 1:
            raise PluginError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.alpha, self.prob, self.mode, self.smoothing = alpha, prob, mode, label_smoothing

    def draw(self, ctx: Context, n: int):
        """(perm, lam) for a batch of ``n``: lam is a float (batch mode) or an array of n values."""
        mixed = self.alpha > 0 and (self.prob >= 1 or ctx.rng.random() < self.prob)
        if self.mode == "batch":
            lam = float(ctx.rng.beta(self.alpha, self.alpha)) if mixed else 1.0
            return permutation(ctx, n), lam
        if self.mode == "pair":
            order = ctx.rng.permutation(n)
            perm = np.arange(n)
            a, b = order[0:n - 1:2], order[1:n:2]
            perm[a], perm[b] = b, a
            lam_pair = ctx.rng.beta(self.alpha, self.alpha, len(a)) if mixed else np.ones(len(a))
            lam = np.ones(n)
            lam[a], lam[b] = lam_pair, lam_pair
            from torch import from_numpy
            return from_numpy(perm).to(ctx.device, non_blocking=True), lam
        lam = ctx.rng.beta(self.alpha, self.alpha, n) if mixed else np.ones(n)
        return permutation(ctx, n), lam

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        n = batch.x.shape[0]
        perm, lam = self.draw(ctx, n)
        lam_t = lam_tensor(lam, n, batch.x.device)
        logits = model(interpolate(batch.x, perm, lam_t))
        return MixOutput(logits, batch.y, batch.y[perm], lam_t, self.smoothing)
