"""SUMix (Qin, Jin, Zhu, Liao, El-Yacoubi, Gao, ECCV 2024): a re-estimated mixing ratio and an uncertainty term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mixcli.api import Context, Loss, MixOutput, PluginError, check_range, soft_cross_entropy, soft_targets, to_device

UNCERTAINTY = ("logits", "head")
REDUCTIONS = ("reference", "per_sample")


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (the reference's ``l2_norm``, no epsilon)."""
    return x / x.pow(2).sum(1).sqrt().view(-1, 1)


def sumix_terms(cls_one: torch.Tensor, cls_mix: torch.Tensor, unc_one: torch.Tensor, unc_mix: torch.Tensor,
                y_a: torch.Tensor, y_b: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor):
    """The reference's ``ClsUncertainMixupHead.IN_loss`` quantities for a batch of B rows:

        p = softmax(z_clean) (detached), p_mix = softmax(z_mix) (detached);  p_a = p with p[y_b] := 0,
        p_b = p[perm] with p[perm][y_a] := 0
        alpha_a = B l2(softmax(p_mix - p_a)),  alpha_b = B l2(softmax(p_mix - p_b))     (semantic distance)
        beta_a = u_clean + u_mix,  beta_b = u_clean[perm] + u_mix                         (uncertainty)
        lam_a = lam exp(-alpha_a)[y_a],  lam_b = (1 - lam) exp(-alpha_b)[y_b],  normalised: lam_a + lam_b = 1
        f_a = exp(-(beta_a + alpha_a)),  f_b = exp(-(beta_b + alpha_b))                   (the uncertainty "logits")

    Returns ``(lam_a, lam_b, f_a, f_b)`` (lam_* of shape (B,), no gradient; f_* (B, K), with the gradient of u)."""
    b = cls_one.shape[0]
    rows = torch.arange(b, device=cls_one.device)
    sem_one = F.softmax(cls_one.detach().float(), dim=-1)
    sem_mix = F.softmax(cls_mix.detach().float(), dim=-1)
    sem_b = sem_one[perm].clone()
    sem_a = sem_one.clone()
    sem_a[rows, y_b] = 0
    sem_b[rows, y_a] = 0
    alpha_a = l2_rows(F.softmax(sem_mix - sem_a, dim=-1)) * b
    alpha_b = l2_rows(F.softmax(sem_mix - sem_b, dim=-1)) * b
    beta_a = unc_one.float() + unc_mix.float()
    beta_b = unc_one.float()[perm] + unc_mix.float()
    lam = lam.float()
    la = lam * torch.exp(-alpha_a)[rows, y_a]
    lb = (1 - lam) * torch.exp(-alpha_b)[rows, y_b]
    lam_a = la / (la + lb)
    return lam_a, 1 - lam_a, torch.exp(-(beta_a + alpha_a)), torch.exp(-(beta_b + alpha_b))


class SUMix(Loss):
    """SUMix: the mixing ratio re-estimated from semantic distances, and an uncertainty regulariser.

    Qin, Jin, Zhu, Liao, El-Yacoubi, Gao, "SUMix: Mixup with Semantic and Uncertain Information", ECCV 2024;
    reference: JinXins/SUMix (an OpenMixup fork) ``ClsUncertainMixupHead.IN_loss`` and
    ``MixUpClassification`` with ``is_IN=True`` (configs ``mixups/uncertain``: CIFAR-100 ResNet-18 with
    CutMix alpha 0.2, gama 0.5).

    A loss policy: it composes with any mixing method that records its partners (every method drawing them
    with ``mixcli.api.permutation`` or the mixup switch: cutmix, saliencymix, fmix, resizemix, mixup, gridmix,
    smoothmix, snapmix, puzzlemix, transmix, ...). With the method's mixed logits z_mix, its lam and partners,
    the loss runs the model once more on the clean batch (z_clean, with gradient, as the reference) and
    computes :func:`sumix_terms`, then::

        L = CE(z_mix, y_a) lam_a + CE(z_mix, y_b) lam_b + gamma (CE(f_a, y_a) lam + CE(f_b, y_b) (1 - lam))

    ``reduction: reference`` (default): as the reference, each CE is the batch mean, multiplied by the mean
    of its weight (the reference's ``CrossEntropyLoss`` with ``avg_factor`` returns a scalar before the
    per-row weights multiply it); ``per_sample``: the mean over rows of the per-row products (the paper's
    per-sample form). No label smoothing (the reference's CE); rows of unmixed batches get the plain soft CE.

    ``uncertainty``: the reference's ``is_norm`` switch. ``logits`` (u = the classifier's logits, the
    reference's ``is_norm: False``) is what is implemented. ``head`` (u = l2(softmax(W x)), a second linear
    head on the pooled features, the reference's default ``is_norm: True``) is not implemented: a loss plugin
    sees only the logits of the mixed batch, not its features, and has no state in the checkpoint for the
    learned head; it is refused with one line. Options: ``gamma`` (0.5, the CIFAR configs' ``gama``; the
    head's own default is 0.1), ``uncertainty`` (logits), ``reduction`` (reference).
    """

    tasks = ("classification",)
    paper = "Qin et al., SUMix: Mixup with Semantic and Uncertain Information, ECCV 2024"

    def __init__(self, gamma: float = 0.5, uncertainty: str = "logits", reduction: str = "reference"):
        check_range("gamma", gamma, 0)
        if uncertainty not in UNCERTAINTY:
            raise PluginError(f"uncertainty must be one of {', '.join(UNCERTAINTY)}, got {uncertainty!r}")
        if uncertainty == "head":
            raise PluginError("uncertainty: head (the reference's is_norm: True, a learned second head on the "
                              "features) is not implemented: a loss sees only the mixed logits; use "
                              "uncertainty: logits")
        if reduction not in REDUCTIONS:
            raise PluginError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.gamma, self.uncertainty, self.reduction = gamma, uncertainty, reduction

    def __call__(self, out: MixOutput, ctx: Context) -> torch.Tensor:
        batch, perm = ctx.extra.get("batch"), ctx.extra.get("partners")
        if out.y_a is out.y_b:  # an unmixed batch (MixOutput.unmixed): nothing to re-estimate
            return soft_cross_entropy(out.logits, soft_targets(out, ctx.num_classes))
        if batch is None or ctx.model is None:
            raise PluginError("sumix needs the clean batch and the model (ctx.extra['batch'], ctx.model: set by "
                              "the engine and by mixcli.mixing.Mixer)")
        if perm is None:
            raise PluginError("sumix needs the method's partners; this method does not record them (methods "
                              "that draw them with mixcli.api.permutation or the mixup switch do)")
        if not isinstance(perm, torch.Tensor):
            perm = to_device(perm, out.logits.device)
        z_mix = out.logits
        z_one = ctx.model(batch.x)
        n = z_mix.shape[0]
        lam = out.lam.float().view(-1)
        lam = lam.expand(n) if lam.numel() == 1 else lam
        lam_a, lam_b, f_a, f_b = sumix_terms(z_one, z_mix, z_one, z_mix, out.y_a, out.y_b, perm, lam)
        ce = lambda z, y: F.cross_entropy(z.float(), y, reduction="none")  # noqa: E731
        if self.reduction == "reference":
            main = ce(z_mix, out.y_a).mean() * lam_a.mean() + ce(z_mix, out.y_b).mean() * lam_b.mean()
            reg = ce(f_a, out.y_a).mean() * lam.mean() + ce(f_b, out.y_b).mean() * (1 - lam).mean()
        else:
            main = (ce(z_mix, out.y_a) * lam_a + ce(z_mix, out.y_b) * lam_b).mean()
            reg = (ce(f_a, out.y_a) * lam + ce(f_b, out.y_b) * (1 - lam)).mean()
        return main + self.gamma * reg
