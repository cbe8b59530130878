"""AdAutoMix (Qin, Liu, Li, Li, Li, ICLR 2024): an adversarial learned mixer of two or more images."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, MixOutput, Model, PluginError, check_range, lam_tensor, permutation, to_device
from mixcli.mixing.learned import ENCODER_PASSES, AdaptiveMask, MomentumMixer, mixed_ce

ADVERSARIAL = ("alternate", "always")


class AdAutoMix(MomentumMixer):
    """AdAutoMix: an adversarial mask generator mixing several images, trained through an EMA teacher.

    Qin, Liu, Li, Li, Li, "Adversarial AutoMixup", ICLR 2024; the reference is JinXins/Adversarial-AutoMixup
    (``openmixup/models/classifiers/AdAutoMix.py``, the generator ``heads/Ada_mix_pine.py``) with its CIFAR-100
    ResNet-18 config (``configs/classification/cifar100/basic/r18_adautomix_bilinear.py``: 82.32 at 800 epochs).
    With f_q the model, f_k its EMA (momentum) copy, S = ``mix_samples`` images per mixed row (``random_samples``:
    S ~ U{2..mix_samples} per step) and G the generator (:class:`mixcli.mixing.learned.AdaptiveMask`)::

        S = 2:  lam_m, lam_q ~ Beta(alpha, alpha);  P_m = (id, perm_m),  P_q = (id, perm_q);
                lambdas (lam_m, 1 - lam_m) and (lam_q, 1 - lam_q)
        S > 2:  l_1..l_S ~ Beta(alpha, alpha), lam = l / sum(l) (one lambda vector for both mixes);
                P_m = (perm_m, perm_q, perm_3, ..., perm_S),  P_q = S fresh permutations
        h = f_k up to ``mask_position`` (no grad);  M_m = G(h[P_m], lam) (B, S, H, W), M_q = G(h[P_q], lam), detached
        M_q = lam (constant masks) when lam_q (S > 2: lam_1) <= lam_margin or 1 - it <= lam_margin (< for S > 2)
        x~_m = sum_i M_m,i x[P_m,i],  x~_q = sum_i M_q,i x[P_q,i],   x^_q = sum_i lam_i x[P_q,i]   (S > 2 only)

        L_q   = CE_mix(head_mix_q(g_q(x~_q)); P_q, lam) + L_one
        L_one = CE(f_q(x), y)                                              (S = 2)
              = (1 - r) CE(f_q(x), y) + r CE_mix(head_mix_q(g_q(x^_q)); P_q, lam)   (S > 2, r = ``mixup_ratio``)
        L_k   = CE_mix(head_mix_k(g_k(x~_m)); P_m, lam)           (trains the generator only)
        every other step, from the first (the adversarial step):
        L_k   = -beta L_k + (1 - beta) mean_b sum_i lam_i cos(p(x~_m), p(x[P_m,i]))   (beta = ``beta_ratio``)
        L = L_q + L_k;  p = head_mix_k(g_k(.));  after each step f_k <- mu f_k + (1 - mu) f_q, mu: 0.999 -> 0.999999

    ``CE_mix(z; P, lam) = sum_i lam_i CE(z, y[P_i])``. So the generator alternates between helping the
    teacher (a step that lowers f_k's mixed CE, as AutoMix) and fighting it (a step that raises the mixed CE
    while keeping the mixed sample's prediction close, in cosine, to those of its sources), as the reference's
    ``iter`` counter does; f_q learns on the generator's (detached) masks. The counter, the generator, its SGD
    (``mixblock_lr`` 0.1 -> ``mixblock_min_lr`` 0.05 by a cosine per epoch, momentum 0.9, weight decay 1e-4,
    stepped in the backward pass), the EMA teacher and the four heads (``heads: reference``, as AutoMix's;
    the ``automix_heads`` evaluator reports them) are in the method's ``state_dict``, so a resumed run
    continues exactly. Draws, in order, from ``ctx.rng``: perm_m, perm_q, (S, with ``random_samples``), the S
    Beta draws, then for S > 2 perm_3..perm_S and the S permutations of P_q.

    Notes on the reference: the paper states a min-max objective (the generator maximises the mixed CE, kept
    close to its sources by the cosine term); the code alternates (every other step adversarial, the other
    steps the ordinary mixed CE): that is the default, ``adversarial: alternate``; ``adversarial: always``
    makes every step the adversarial one. The generator's feature pass runs all of f_k as the reference's
    ``backbone_k(img)`` (``encoder_pass: full``; ``to_mask``: up to ``mask_position`` only, the same masks
    with other BatchNorm statistics in f_k's later stages). ``lam_concat`` (lambda as an extra channel) is
    off in every reference config.
    """

    paper = "Qin et al., Adversarial AutoMixup, ICLR 2024"
    label = "adautomix"

    def __init__(self, alpha: float = 1.0, mix_samples: int = 3, random_samples: bool = False,
                 mask_position: int | None = None, lam_margin: float = 0.03, mixup_ratio: float = 0.5,
                 beta_ratio: float = 0.3, momentum: float = 0.999, end_momentum: float = 0.999999,
                 mixblock_lr: float = 0.1, mixblock_min_lr: float = 0.05, upsampling: str = "bilinear",
                 reduction: int = 2, lam_concat: bool = False, adversarial: str = "alternate",
                 encoder_pass: str = "full", label_smoothing: float = 0.0, heads: str = "reference"):
        self.check_common(alpha, mask_position, lam_margin, momentum, end_momentum, mixblock_lr, mixblock_min_lr,
                          upsampling, label_smoothing, heads)
        if encoder_pass not in ENCODER_PASSES:
            raise PluginError(f"encoder_pass must be one of {', '.join(ENCODER_PASSES)}, got {encoder_pass!r}")
        self.encoder_pass = encoder_pass
        if not (isinstance(mix_samples, int) and not isinstance(mix_samples, bool) and mix_samples >= 2):
            raise PluginError(f"mix_samples must be an integer >= 2 (images per mixed row), got {mix_samples}")
        for name, v in (("random_samples", random_samples), ("lam_concat", lam_concat)):
            if not isinstance(v, bool):
                raise PluginError(f"{name} must be true or false, got {v!r}")
        if adversarial not in ADVERSARIAL:
            raise PluginError(f"adversarial must be one of {', '.join(ADVERSARIAL)}, got {adversarial!r}")
        self.adversarial = adversarial
        check_range("mixup_ratio", mixup_ratio, 0, 1)
        check_range("beta_ratio", beta_ratio, 0, 1)
        if not (isinstance(reduction, int) and not isinstance(reduction, bool) and reduction >= 1):
            raise PluginError(f"reduction must be an integer >= 1, got {reduction}")
        self.mix_samples, self.random_samples = mix_samples, random_samples
        self.mixup_ratio, self.beta_ratio = mixup_ratio, beta_ratio
        self.reduction, self.lam_concat = reduction, lam_concat
        self.iter = 0

    def make_block(self, channels: int) -> AdaptiveMask:
        return AdaptiveMask(channels, self.reduction, self.lam_concat)

    def extra_state(self) -> dict:
        return {"iter": torch.tensor(self.iter)}

    def load_extra_state(self, state: dict) -> None:
        self.iter = int(state["iter"])

    def draw(self, ctx: Context, n: int):
        """``(S, lam_m, lam_q, P_m, P_q)`` for one step, in the reference's order (see the class docstring)."""
        perm_m, perm_q = permutation(ctx, n), permutation(ctx, n)
        s = int(ctx.rng.integers(2, self.mix_samples + 1)) if self.random_samples else self.mix_samples
        lam = ctx.rng.beta(self.alpha, self.alpha, s)
        if s == 2:
            ident = torch.arange(n, device=perm_m.device)
            lm, lq = float(lam[0]), float(lam[1])
            return s, (lm, 1 - lm), (lq, 1 - lq), [ident, perm_m], [ident, perm_q]
        lam = [float(v) for v in lam / lam.sum()]
        p_m = [perm_m, perm_q] + [permutation(ctx, n) for _ in range(2, s)]
        p_q = [permutation(ctx, n) for _ in range(s)]
        return s, lam, lam, p_m, p_q

    @staticmethod
    def combine(x: torch.Tensor, perms, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i weights[:, i] x[perms[i]]`` with per-pixel weights (B, S, H, W)."""
        out = x[perms[0]] * weights[:, :1].to(x.dtype)
        for i in range(1, len(perms)):
            out = out + x[perms[i]] * weights[:, i:i + 1].to(x.dtype)
        return out

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        self.begin_step(model, ctx, n)  # the EMA update after the previous step, with its momentum
        s, lam_m, lam_q, p_m, p_q = self.draw(ctx, n)
        size = x.shape[-2:]
        h = self.features(x, self.encoder_pass == "full")
        m_m = self.block([h[p] for p in p_m], lam_m, size, self.up)
        with torch.no_grad():
            m_q = self.block([h[p] for p in p_q], lam_q, size, self.up)
        first = lam_q[0]
        if self.lam_margin >= first or (self.lam_margin >= 1 - first if s == 2 else self.lam_margin > 1 - first):
            m_q = to_device(np.asarray(lam_q, np.float32), x.device).to(m_q.dtype).view(1, s, 1, 1).expand_as(m_q)
        x_m, x_q = self.combine(x, p_m, m_m), self.combine(x, p_q, m_q)
        kk, sm = ctx.num_classes, self.smoothing
        ys_m, ys_q = [y[p] for p in p_m], [y[p] for p in p_q]
        # the teacher's mixed CE (the generator's loss), and the sources' predictions for the cosine term
        k_logits = self.k_logits(x_m)
        loss_k = mixed_ce(k_logits, ys_m, lam_m, kk, sm)
        with torch.no_grad():
            src = [self.k_logits(x[p]) for p in p_m]
        cos = sum(F.cosine_similarity(k_logits.float(), z.float(), dim=-1) * w for z, w in zip(src, lam_m)).mean()
        adversarial = self.iter % 2 == 0 or self.adversarial == "always"
        if adversarial:
            loss_k = -self.beta_ratio * loss_k + (1 - self.beta_ratio) * cos
        self.iter = 0 if adversarial else self.iter
        self.iter += 1
        # the classifier: clean CE (and, for S > 2, the linear mix of the same images), and the generator's mix
        one = mixed_ce(model(x), (y,), (1.0,), kk, sm)
        if s > 2:
            lin = sum(x[p] * w for p, w in zip(p_q, lam_q))
            one = (1 - self.mixup_ratio) * one + self.mixup_ratio * mixed_ce(
                self.q_logits(model, lin), ys_q, lam_q, kk, sm)
        q_logits = self.q_logits(model, x_q)
        loss = mixed_ce(q_logits, ys_q, lam_q, kk, sm) + one + loss_k
        top = max(range(s), key=lambda i: lam_q[i])  # the MixOutput's labels: the two largest shares
        second = max((i for i in range(s) if i != top), key=lambda i: lam_q[i])
        share = lam_q[top] / (lam_q[top] + lam_q[second])
        out = MixOutput(q_logits, ys_q[top], ys_q[second], lam_tensor(share, n, x.device), sm, loss=loss)
        out.info = {"mask_mean": m_m.detach()[:, 0].mean(), "cosine": cos.detach()}
        return out
