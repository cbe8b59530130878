"""Input mixup (Zhang et al., ICLR 2018), with timm's modes and its mixup / CutMix switch."""
from __future__ import annotations

import numpy as np
import torch

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate, lam_tensor,
                        to_device)
from mixcli.mixing.boxes import box_mask, mix_rows, paste
from mixcli.mixing.partners import check_partners, uniform_partners
from mixcli.mixing.switch import LAM_MODES, MixCutSwitch  # noqa: F401 (LAM_MODES: the mode option's values)


class Mixup(MixCutSwitch, Method):
    """Mixup: train on convex combinations of pairs of inputs and their labels (optionally CutMix instead).

    Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018.

        lam ~ Beta(alpha, alpha),  x~ = lam * x_i + (1 - lam) * x_j,  y~ = lam * y_i + (1 - lam) * y_j

    with ``j`` the partner of ``i`` under a random permutation of the batch. Options (timm's ``Mixup``):

    - ``alpha`` (1.0, the paper's CIFAR value; 0.2 on ImageNet): Beta parameter; 0 turns mixup off.
    - ``prob`` (1.0): probability that a batch (``batch`` mode), a pair or an element is mixed at all.
    - ``mode`` (batch): one lambda per ``batch``; per ``pair`` (the batch is split into random disjoint pairs
      that share one lambda, mixed in both directions); per ``elem`` (one lambda per example).
    - ``label_smoothing`` (0.0): smoothing of each one-hot label before mixing (classification).
    - ``cutmix_alpha`` (0.0 = off): Beta parameter of CutMix (Yun et al., ICCV 2019). With both alphas > 0,
      each batch / pair / element uses CutMix with probability ``switch_prob`` (0.5) and mixup otherwise
      (the DeiT recipe: alpha 0.8, cutmix_alpha 1.0, switch_prob 0.5, label_smoothing 0.1); with alpha 0
      it always uses CutMix. CutMix lambda is the box's area when ``correct_lam`` (true) or
      ``cutmix_minmax`` (box side fractions [lo, hi], see ``cutmix``; timm silently sets cutmix_alpha 1 with
      it, here it needs cutmix_alpha > 0) is set. One box per batch in ``batch`` mode, one per pair /
      element otherwise (timm's rule), pasted on the device with a mask.

    Partners come from a random permutation (random disjoint pairs in ``pair`` mode); timm pairs row i
    with row B-1-i and torchvision with row i-1, which equals a permutation of a shuffled batch.

    Regression: float targets (N, D) mix the same way (``mse`` loss). The C-Mixup reference's ``mixtype
    random`` instead draws each row's partner uniformly over all N training examples (with replacement). The
    batch being a uniformly random subset, an in-batch partner is the row itself with probability 1/B (a
    fixed point of the permutation) and otherwise uniform over the other N - 1 examples: the same non-self
    distribution, but more self-pairs (1/B vs 1/N: 6.25% vs 0.1% at B = 16, N = 1003), which train unmixed,
    and distinct partners within a batch. ``partners: dataset`` uses the reference's draw (uniform over the
    training set, with replacement, the inputs fetched with ``ctx.fetch``; lambda as ``mode`` says, ``batch``
    or ``elem``, no CutMix); ``partners: batch`` (default) is the permutation of the batch. Label-aware
    partners over the whole training set: ``cmixup``.
    """

    family = "input"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, mode: str = "batch", label_smoothing: float = 0.0,
                 cutmix_alpha: float = 0.0, switch_prob: float = 0.5, cutmix_minmax: list | None = None,
                 correct_lam: bool = True, partners: str = "batch"):
        MixCutSwitch.__init__(self, alpha=alpha, prob=prob, mode=mode, cutmix_alpha=cutmix_alpha,
                              switch_prob=switch_prob, cutmix_minmax=cutmix_minmax, correct_lam=correct_lam)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.partners = check_partners(partners)
        if partners == "dataset" and (cutmix_alpha > 0 or mode == "pair"):
            raise PluginError("partners: dataset draws each row's partner from the training set; it mixes by "
                              "interpolation with mode batch or elem (set cutmix_alpha 0 and mode batch or elem)")
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        self.check_inputs(ctx, "mixup with cutmix_alpha > 0")

    def requires(self) -> frozenset[str]:
        return frozenset({"images"} if self.cutmix_alpha > 0 else set()) | (
            {"train"} if self.partners == "dataset" else set())

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        h, w = (x.shape[-2], x.shape[-1]) if x.dim() == 4 else (0, 0)
        perm, lam, cut, box = self.draw(ctx, n, h, w)
        lam_t = lam_tensor(float(lam[0]) if self.mode == "batch" else lam, n, x.device)
        if self.partners == "dataset":  # the C-Mixup reference's partners: uniform over the training set
            x2, y2 = ctx.fetch(uniform_partners(ctx.rng, n, len(ctx.train), x.device))
            ctx.extra.pop("partners", None)  # not batch rows: the switch's draw is not this step's pairing
            w = lam_t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            return MixOutput(model(w * x + (1 - w) * x2), batch.y, y2, lam_t, self.smoothing)
        perm = to_device(perm, x.device)
        if not cut.any():
            mixed = x if (lam == 1).all() else interpolate(x, perm, lam_t)
        elif self.mode == "batch":
            mixed = paste(x, perm, tuple(int(v[0]) for v in box))
        else:
            lam_interp = lam_tensor(np.where(cut, 1.0, lam), n, x.device)
            mixed = mix_rows(x, perm, lam_interp, box_mask(box, h, w, x.device))
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_t, self.smoothing)
