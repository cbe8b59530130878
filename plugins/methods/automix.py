"""AutoMix (Liu, Li, Wang, Tan, Li, ECCV 2022): a learned MixBlock generates the mixing masks."""
from __future__ import annotations

import torch

from mixcli.api import Batch, Context, MixOutput, Model, PluginError, check_range, lam_tensor, permutation, \
    soft_cross_entropy, soft_targets
from mixcli.mixing.learned import HEADS, UPSAMPLING, MixBlock, MomentumMixer, momentum_at

__all__ = ["AutoMix", "MixBlock", "momentum_at", "HEADS", "UPSAMPLING"]


class AutoMix(MomentumMixer):
    """AutoMix: masks from a MixBlock trained jointly through a momentum encoder; the classifier learns on them.

    Liu, Li, Wang, Tan, Li, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022; the
    reference is OpenMixup's ``AutoMixup`` with its CIFAR-100 ResNet-18 config
    (``automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py``). Per step, with f_q the model and f_k its momentum copy:

        lam_m, lam_q ~ Beta(alpha, alpha);  perm_q, perm_m random;  h = f_k up to ``mask_position`` (no grad)
        M_m = MixBlock(h, lam_m, perm_m);  M_q = MixBlock(h, lam_q, perm_q), detached; M_q = 1 - lam_q
              everywhere when lam_q or 1 - lam_q <= lam_margin (plain mixup)
        x~_m = (1 - M_m) x + M_m x[perm_m],  x~_q likewise with M_q
        L = CE_mix(f_q(x~_q); lam_q) + CE(f_q(x), y)                              (trains f_q)
          + CE_mix(f_k(x~_m); lam_m) + w max(|1 - mean(M_m) - lam_m| - margin, 0)  (trains the MixBlock only)
        after each step: f_k <- mu f_k + (1 - mu) f_q  (parameters), mu: 0.999 -> 0.999999 by a cosine
        over the run, constant for its first 10% (OpenMixup's CosineScheduleHook)

    ``CE_mix(z; lam) = lam CE(z, y) + (1 - lam) CE(z, y[perm])``. The MixBlock has its own SGD (``mixblock_lr``
    0.1, momentum 0.9, weight decay 1e-4, cosine per epoch to ``mixblock_min_lr`` 0.05: the reference's
    optimizer and schedule), stepped as soon as its gradients are accumulated in the backward pass. Its
    weights, optimizer state and the momentum encoder are in the method's ``state_dict`` (saved in every
    checkpoint), so a resumed run continues exactly. Defaults: ``alpha`` 2, ``mask_position`` (null: the
    stage before the last, ResNet-18's stage 3 as the reference's ``mask_layer=2``), ``mask_loss`` 0.1,
    ``mask_margin`` 0.1, ``lam_margin`` 0.08, ``momentum`` 0.999, ``end_momentum`` 0.999999, ``upsampling``
    nearest, ``lam_concat`` false, ``reduction`` 2. The method sets its own loss.

    Heads. ``heads: reference`` (default) has the reference's four linear heads (OpenMixup ``AutoMixup``,
    ``head_weights`` ``head_mix_q``, ``head_one_q``, ``head_mix_k``, ``head_one_k``): ``head_one_q`` is the
    model's classifier (the clean CE), ``head_mix_q`` a second linear head on f_q's pooled features that
    takes the mixed CE of x~_q, and ``head_mix_k`` / ``head_one_k`` their momentum copies on f_k (updated
    with the encoder, ``f_k`` includes ``head_one_k``); the MixBlock's loss ``CE_mix(f_k(x~_m))`` goes
    through ``head_mix_k``::

        L = CE_mix(head_mix_q(g_q(x~_q)); lam_q) + CE(head_one_q(g_q(x)), y)
          + CE_mix(head_mix_k(g_k(x~_m)); lam_m) + w max(|1 - mean(M_m) - lam_m| - margin, 0)

    ``head_mix_q`` starts as OpenMixup's ``ClsHead`` (weights ~ N(0, 0.01), bias 0) and is trained with the
    run's optimizer settings: an optimizer of the run's class and defaults, stepped in the backward pass at
    the learning rate of the run's classifier group (read from the engine's optimizer at each step), as
    the reference trains it with the rest of the network. The reference reports the test accuracy of each
    head (``simple_test``: ``acc_mix_k``, ``acc_one_k``, ``acc_mix_q``, ``acc_one_q``); the evaluator
    ``automix_heads`` reports them as ``automix_{mix_k,one_k,mix_q,one_q}_accuracy``. The run's own metrics
    (``accuracy`` etc.) are ``head_one_q``'s: the model's classifier. ``heads: shared`` is mixcli's earlier
    variant: the model's one classifier serves both q losses and the momentum copy of it the MixBlock's.
    """

    family = "input"
    paper = "Liu et al., AutoMix: Unveiling the Power of Mixup for Stronger Classifiers, ECCV 2022"
    needs = ("images", "train", "epochs", "class_labels", "stages")
    tasks = ("classification",)

    def __init__(self, alpha: float = 2.0, mask_position: int | None = None, mask_loss: float = 0.1,
                 mask_margin: float = 0.1, lam_margin: float = 0.08, momentum: float = 0.999,
                 end_momentum: float = 0.999999, mixblock_lr: float = 0.1, mixblock_min_lr: float = 0.05,
                 upsampling: str = "nearest", lam_concat: bool = False, reduction: int = 2,
                 label_smoothing: float = 0.0, heads: str = "reference"):
        self.check_common(alpha, mask_position, lam_margin, momentum, end_momentum, mixblock_lr, mixblock_min_lr,
                          upsampling, label_smoothing, heads)
        check_range("mask_loss", mask_loss, 0)
        check_range("mask_margin", mask_margin, 0, 1)
        if not (isinstance(reduction, int) and reduction >= 1):
            raise PluginError(f"reduction must be an integer >= 1, got {reduction}")
        self.mask_w, self.mask_margin, self.lam_concat, self.reduction = mask_loss, mask_margin, lam_concat, reduction

    def make_block(self, channels: int) -> MixBlock:
        return MixBlock(channels, self.reduction, self.lam_concat)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        self.begin_step(model, ctx, n)  # the momentum update after the previous step, with its momentum
        lam_m, lam_q = (float(v) for v in ctx.rng.beta(self.alpha, self.alpha, 2))
        perm_q, perm_m = permutation(ctx, n), permutation(ctx, n)
        size = x.shape[-2:]
        with torch.no_grad():
            h = self.k.forward_to(x, self.pos)
        m_m = self.block(h, lam_m, perm_m, size, self.up)
        if self.lam_margin >= lam_q or self.lam_margin >= 1 - lam_q:
            m_q = torch.full_like(m_m, 1 - lam_q).detach()
        else:
            with torch.no_grad():
                m_q = self.block(h, lam_q, perm_q, size, self.up)
        x_m = torch.lerp(x, x[perm_m], m_m.to(x.dtype))
        x_q = torch.lerp(x, x[perm_q], m_q.to(x.dtype))
        k_logits, q_logits = self.k_logits(x_m), self.q_logits(model, x_q)
        k_out = MixOutput(k_logits, y, y[perm_m], lam_tensor(lam_m, n, x.device), self.smoothing)
        q_out = MixOutput(q_logits, y, y[perm_q], lam_tensor(lam_q, n, x.device), self.smoothing)
        one = MixOutput.unmixed(model(x), y, self.smoothing)
        kk = ctx.num_classes
        mask_loss = (1 - m_m.mean() - lam_m).abs().sub(self.mask_margin).clamp_min(0)
        loss = (soft_cross_entropy(q_out.logits, soft_targets(q_out, kk))
                + soft_cross_entropy(one.logits, soft_targets(one, kk))
                + soft_cross_entropy(k_out.logits, soft_targets(k_out, kk))
                + self.mask_w * mask_loss)
        q_out.loss = loss
        q_out.info = {"mask_mean": m_m.detach().mean(), "mask_loss": mask_loss.detach()}
        return q_out
