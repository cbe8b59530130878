"""SAMix (Li, Liu, Wang, ..., Li, 2021): AutoMix's successor with a non-linear, lambda-scaled MixBlock."""
from __future__ import annotations

import torch

from mixcli.api import Batch, Context, MixOutput, Model, PluginError, check_range, lam_tensor, permutation
from mixcli.mixing.learned import (ENCODER_PASSES, MASK_LOSSES, MomentumMixer, SAMixBlock, adjust_mask_mean,
                                   mixblock_mask_loss, mixed_ce)

ADJUST_LAMS = ("mixblock", "backbone")


class SAMix(MomentumMixer):
    """SAMix: AutoMix's learned mixing with SAMix's MixBlock (lambda-scaled, non-linear value) and mask losses.

    Li, Liu, Wang, Wu, Tan, Zheng, Li, "Boosting Discriminative Visual Representation Learning with
    Scenario-Agnostic Mixup", arXiv 2111.15454, 2021. The reference is OpenMixup's ``AutoMixup`` classifier with
    the SAMix CIFAR-100 ResNet-18 config (``samix/basic/r18/unsampling_modebilinear/
    r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2_lam_mul_k0_25_mask_adjust0_25_ep800.py``, the 800-epoch
    setting of the published 82.30). Per step, with f_q the model and f_k its momentum copy:

        lam_m, lam_q ~ Beta(alpha, alpha);  perm_q, perm_m random;  h = f_k up to ``mask_position`` (no grad)
        M_m = B(h, lam_m, perm_m);  M_q = B(h, lam_q, perm_q), detached     (B: :class:`SAMixBlock`)
        with probability ``mask_adjust``: M_q rescaled so that x's mean share is lam_m (the reference's
              ``lam[0]``; ``mask_adjust_lam: backbone`` uses lam_q), see ``adjust_mask_mean``
        M_q = 1 - lam_q everywhere when lam_q or 1 - lam_q <= lam_margin (plain mixup)
        x~_m = (1 - M_m) x + M_m x[perm_m],  x~_q likewise with M_q
        L = CE_mix(head_mix_q(g_q(x~_q)); lam_q) + CE(f_q(x), y)                         (trains f_q)
          + CE_mix(head_mix_k(g_k(x~_m)); lam_m) + w L_mask(M_m, lam_m)                  (trains the MixBlock)
        L_mask = max(|1 - mean(M_m) - lam_m| - margin, 0) - 2 Var(M_m)       (``mask_loss_mode: L1+Variance``)
        after each step: f_k <- mu f_k + (1 - mu) f_q, mu: 0.999 -> 0.999999 (OpenMixup's CosineScheduleHook)

    SAMixBlock: ``a = h (1 + r)``, ``b = h[perm] (1 + (1 - r))`` with ``r = rescale_lam(lam, 0.25)``
    (``lam_mul`` 1, ``lam_residual``, ``lam_mul_k`` 0.25); q and k are two 1x1 convs of ``[a; b]``
    (``x_qk_concat``); the value is conv1x1-BN-ELU-conv1x1 of b (``value_hidden``: C / 2, 128 for ResNet-18's
    stage 3); ``m = sigmoid(up(softmax(q^T k / sqrt(C/2)) v))`` with bilinear upsampling.

    Everything else is AutoMix's (``mixcli.mixing.learned.MomentumMixer``): the four heads of ``heads:
    reference``, the MixBlock's own SGD (``mixblock_lr`` 0.1 -> ``mixblock_min_lr`` 0.05 by a cosine per epoch,
    momentum 0.9, weight decay 1e-4), stepped in the backward pass; the MixBlock (with its BatchNorm
    statistics), its optimizer, the momentum encoder and the heads are in the method's ``state_dict``, so a
    resumed run continues exactly. Draws, in order, from ``ctx.rng``: the two lambdas, perm_q, perm_m, and the
    uniform that decides ``mask_adjust`` (drawn every step, as the reference's ``np.random.rand()``).

    Differences from the paper / notes on the reference: the reference's head for the MixBlock's loss is
    configured with ``neg_weight: 0.5`` (the paper's eta-balanced loss), but with the softmax soft
    cross-entropy it is given the weight multiplies only classes whose target is 0, so it changes nothing:
    the MixBlock's loss here is the plain mixed CE, as the reference computes. ``mask_adjust`` rescales the
    backbone's mask towards the MixBlock's lambda (``lam[0]``) in the reference, not its own lam_q; that is
    the default (``mask_adjust_lam: mixblock``), ``backbone`` the evident intent. The basic (400-epoch) config
    has ``mask_adjust: 0``; the 800-epoch one and the config's comment ("0.25 for CIFAR") use 0.25, the default.
    The reference's feature pass runs all of f_k (``backbone_k(img)``: in train mode its later stages'
    BatchNorm statistics see the clean batch): ``encoder_pass: full``, the default; ``to_mask`` runs f_k up to
    ``mask_position`` only, as mixcli's automix does (the masks are the same, f_k's statistics differ).
    """

    paper = "Li et al., Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup, 2021"
    label = "samix"

    def __init__(self, alpha: float = 2.0, mask_position: int | None = None, mask_loss: float = 0.1,
                 mask_loss_mode: str = "L1+Variance", mask_margin: float = 0.1, mask_adjust: float = 0.25,
                 mask_adjust_lam: str = "mixblock", lam_margin: float = 0.08, momentum: float = 0.999,
                 end_momentum: float = 0.999999, mixblock_lr: float = 0.1, mixblock_min_lr: float = 0.05,
                 upsampling: str = "bilinear", reduction: int = 2, lam_mul: float = 1.0, lam_mul_k: float = 0.25,
                 lam_residual: bool = True, value_hidden: int | None = None, x_qk_concat: bool = True,
                 encoder_pass: str = "full", label_smoothing: float = 0.0, heads: str = "reference"):
        self.check_common(alpha, mask_position, lam_margin, momentum, end_momentum, mixblock_lr, mixblock_min_lr,
                          upsampling, label_smoothing, heads)
        if encoder_pass not in ENCODER_PASSES:
            raise PluginError(f"encoder_pass must be one of {', '.join(ENCODER_PASSES)}, got {encoder_pass!r}")
        self.encoder_pass = encoder_pass
        check_range("mask_loss", mask_loss, 0)
        if mask_loss_mode not in MASK_LOSSES:
            raise PluginError(f"mask_loss_mode must be one of {', '.join(MASK_LOSSES)}, got {mask_loss_mode!r}")
        check_range("mask_margin", mask_margin, 0, 1)
        check_range("mask_adjust", mask_adjust, 0, 1)
        if mask_adjust_lam not in ADJUST_LAMS:
            raise PluginError(f"mask_adjust_lam must be one of {', '.join(ADJUST_LAMS)}, got {mask_adjust_lam!r}")
        if not (isinstance(reduction, int) and not isinstance(reduction, bool) and reduction >= 1):
            raise PluginError(f"reduction must be an integer >= 1, got {reduction}")
        check_range("lam_mul", lam_mul, 0, 1)
        check_range("lam_mul_k", lam_mul_k, high=10)
        if value_hidden is not None and not (isinstance(value_hidden, int) and not isinstance(value_hidden, bool)
                                             and value_hidden >= 0):
            raise PluginError(f"value_hidden must be an integer >= 0 (0: a linear 1x1 value conv) or null, "
                              f"got {value_hidden}")
        for name, v in (("lam_residual", lam_residual), ("x_qk_concat", x_qk_concat)):
            if not isinstance(v, bool):
                raise PluginError(f"{name} must be true or false, got {v!r}")
        self.mask_w, self.mask_mode, self.mask_margin = mask_loss, mask_loss_mode, mask_margin
        self.mask_adjust, self.adjust_lam, self.reduction = mask_adjust, mask_adjust_lam, reduction
        self.block_opts = dict(reduction=reduction, lam_mul=lam_mul, lam_mul_k=lam_mul_k, lam_residual=lam_residual,
                               value_hidden=value_hidden, x_qk_concat=x_qk_concat)

    def make_block(self, channels: int) -> SAMixBlock:
        return SAMixBlock(channels, **self.block_opts)

    def masks(self, h: torch.Tensor, lam_m: float, lam_q: float, perm_m: torch.Tensor, perm_q: torch.Tensor,
              size, adjust: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The MixBlock's mask M_m (with gradient) and the backbone's M_q (detached, adjusted and with the
        lam_margin fallback), both the partner's share (B, 1, H, W), in the reference's order."""
        m_m = self.block(h, lam_m, perm_m, size, self.up)
        with torch.no_grad():  # the reference computes it even when lam_margin replaces it (BatchNorm statistics)
            m_q = self.block(h, lam_q, perm_q, size, self.up)
        if adjust:
            m_q = adjust_mask_mean(m_q, lam_m if self.adjust_lam == "mixblock" else lam_q)
        if self.lam_margin >= lam_q or self.lam_margin >= 1 - lam_q:
            m_q = torch.full_like(m_q, 1 - lam_q)
        return m_m, m_q

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        self.begin_step(model, ctx, n)  # the momentum update after the previous step, with its momentum
        lam_m, lam_q = (float(v) for v in ctx.rng.beta(self.alpha, self.alpha, 2))
        perm_q, perm_m = permutation(ctx, n), permutation(ctx, n)
        adjust = self.mask_adjust > float(ctx.rng.random())
        h = self.features(x, self.encoder_pass == "full")
        m_m, m_q = self.masks(h, lam_m, lam_q, perm_m, perm_q, x.shape[-2:], adjust)
        x_m = torch.lerp(x, x[perm_m], m_m.to(x.dtype))
        x_q = torch.lerp(x, x[perm_q], m_q.to(x.dtype))
        k_logits, q_logits = self.k_logits(x_m), self.q_logits(model, x_q)
        kk, s = ctx.num_classes, self.smoothing
        mask_loss = mixblock_mask_loss(m_m.float(), lam_m, self.mask_mode, self.mask_margin)
        loss = (mixed_ce(q_logits, (y, y[perm_q]), (lam_q, 1 - lam_q), kk, s)
                + mixed_ce(model(x), (y,), (1.0,), kk, s)
                + mixed_ce(k_logits, (y, y[perm_m]), (lam_m, 1 - lam_m), kk, s)
                + self.mask_w * mask_loss)
        out = MixOutput(q_logits, y, y[perm_q], lam_tensor(lam_q, n, x.device), s, loss=loss)
        out.info = {"mask_mean": m_m.detach().mean(), "mask_loss": mask_loss.detach()}
        return out
