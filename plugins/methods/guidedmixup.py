"""GuidedMixup (Kang & Kim, AAAI 2023): pixel-wise mixing ratios from two saliency maps, greedy pairing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, soft_targets,
                        to_device)
from mixcli.mixing.boxes import check_images
from mixcli.mixing.saliency import gaussian_blur, gradient_saliency, greedy_cycle_pairing, spectral_residual

SALIENCY = ("ap", "sr")
PAIRINGS = ("greedy", "random")
CRITERIA = ("soft_ce", "bce_softmax")
#: the reference's CIFAR-100 commands: --mix_prob 0.8 for Guided-AP, 0.5 for Guided-SR
MIX_PROB = {"ap": 0.8, "sr": 0.5}


def bce_of_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``nn.BCELoss()(softmax(z), t)``: the mean over all B x K entries of ``-[t log p + (1-t) log(1-p)]``."""
    return F.binary_cross_entropy(torch.softmax(logits.float(), dim=1), target)


def guided_masks(sal: torch.Tensor, blur: int, sigma: float, pairing: str, rng):
    """``(partner, mask)`` from raw saliency maps ``sal`` (B, H, W): the reference's ``mixup_process``
    (``guided: True``) after the saliency. ``s = blur(sal) / sum(blur(sal))`` per map; ``partner``: the greedy
    cycle on the L2 distances between the ``s`` (one host copy of the (B, B) distances) or a random
    permutation from ``rng``; ``mask = s / (s + s[partner])`` (0.5 where both are 0, where the reference
    divides 0 by 0)."""
    s = gaussian_blur(sal.float(), blur, sigma) if blur > 0 else sal.float()
    s = s / s.sum(dim=(-1, -2), keepdim=True)
    b = s.shape[0]
    if pairing == "greedy":
        flat = s.reshape(b, -1)
        dist = torch.cdist(flat[None], flat[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        partner = greedy_cycle_pairing(dist.cpu().numpy())  # the one host synchronisation of the step
    else:
        partner = rng.permutation(b)
    partner = to_device(partner, s.device)
    den = s + s[partner]
    mask = torch.where(den > 0, s / den.clamp_min(torch.finfo(s.dtype).tiny), torch.full_like(s, 0.5))
    return partner, mask


class GuidedMixup(Method):
    """GuidedMixup: saliency-guided pixel-wise mixing of greedily paired images.

    Kang & Kim, "GuidedMixup: An Efficient Mixup Strategy Guided by Saliency Maps", AAAI 2023 (official code
    3neutronstar/GuidedMixup, ``mixup.py`` / ``main.py`` / ``pairing.pyx`` / ``spectral_residual.py``; CIFAR-100
    commands of its README). Per step (with probability ``mix_prob``, else a clean batch):

        sal = sqrt(mean_c (dCE/dx)^2)   (saliency: ap, an extra forward/backward)
              or the spectral residual S(x) (saliency: sr, :func:`mixcli.mixing.saliency.spectral_residual`)
        s_i = G * sal_i / sum_hw(G * sal_i)    (G: the 7x7 Gaussian of std 3, ``blur`` / ``blur_sigma``)
        j = pi(i): one greedy cycle through the batch maximising the L2 distances ||s_i - s_j||_2
             (start at the farthest pair, then always the farthest unvisited image)
        M_i = s_i / (s_i + s_j)   (pixel-wise)
        x~_i = M_i x_i + (1 - M_i) x_j,   y~_i = lam_i y_i + (1 - lam_i) y_j,   lam_i = mean_hw(M_i)

    Reference behaviour kept: the gradient saliency's forward runs with the model in training mode
    (``saliency_train: true``; BatchNorm uses and updates the batch statistics, as the reference's ``main.py``,
    which never switches to eval for it); the spectral residual is blurred twice (by ``SpectralResidual`` and
    again in ``mixup_process``) and taken of the normalised inputs (``sr_blur: 7``; 0 blurs once);
    ``clean_lam`` > 0 (``saliency: ap`` only) adds ``2 clean_lam / K * CE(f(x), y)`` of the saliency forward to
    the loss (the reference's clean-input regularisation, used for Tiny-ImageNet). The loss:
    ``criterion: bce_softmax`` (default: the official code, whose numbers come from it; see below) or
    ``soft_ce`` (as puzzlemix: the run's loss plugin, the mixed cross-entropy of the
    paper's ``l(f(x~), y~)``; with ``clean_lam`` its clean term becomes ``2 clean_lam CE``, the same ratio
    to the mixed loss); ``bce_softmax`` is the reference's ``nn.BCELoss()(softmax(f(x~)), y~)``, about K
    times smaller; it goes with the reference's own schedule: on digits with a 15-epoch recipe it gave 92.2 % test
    accuracy against 99.3 % for soft_ce, ``saliency: sr``, 2 seeds, so the CPU digits file sets soft_ce).

    Differences from the reference, as options: ``pairing: greedy`` is the paper's (and the FGVC code's)
    greedy cycle; the reference's CIFAR script, asked for ``--condition greedy``, calls ``pairing`` with
    ``'greedy_c'``, which falls through to a random permutation, so the published CIFAR runs may have paired
    at random (``pairing: random`` reproduces that); where both blurred maps are 0 the mask is 0.5 (the
    reference divides 0 by 0). Defaults: ``saliency: ap``, ``mix_prob`` null (0.8 for ap, 0.5 for sr: the two
    CIFAR-100 commands), ``blur`` 7, ``blur_sigma`` 3.0, ``clean_lam`` 0. Images need a side of at least 4
    (the 7x7 blur's reflect padding).
    """

    family = "input"
    paper = "Kang & Kim, GuidedMixup, AAAI 2023"
    needs = ("images", "class_labels")
    tasks = ("classification",)
    min_side = 4

    def __init__(self, saliency: str = "ap", pairing: str = "greedy", mix_prob: float | None = None,
                 blur: int = 7, blur_sigma: float = 3.0, sr_blur: int = 7, clean_lam: float = 0.0,
                 saliency_train: bool = True, criterion: str = "bce_softmax"):
        if saliency not in SALIENCY:
            raise PluginError(f"saliency must be one of {', '.join(SALIENCY)} (gradient / spectral residual), "
                              f"got {saliency!r}")
        if pairing not in PAIRINGS:
            raise PluginError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
        if criterion not in CRITERIA:
            raise PluginError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if mix_prob is not None:
            check_range("mix_prob", mix_prob, 0, 1)
        for name, v in (("blur", blur), ("sr_blur", sr_blur)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0 and (v == 0 or v % 2 == 1)):
                raise PluginError(f"{name} must be 0 (none) or an odd kernel size >= 1, got {v}")
        check_range("blur_sigma", blur_sigma, 0, low_open=True)
        check_range("clean_lam", clean_lam, 0)
        if clean_lam > 0 and saliency != "ap":
            raise PluginError("clean_lam needs saliency: ap (the reference takes the clean loss from the "
                              "gradient saliency's forward; sr has none)")
        self.saliency, self.pairing, self.criterion = saliency, pairing, criterion
        self.mix_prob = MIX_PROB[saliency] if mix_prob is None else float(mix_prob)
        self.blur, self.blur_sigma, self.sr_blur = blur, float(blur_sigma), sr_blur
        self.clean_lam, self.saliency_train = float(clean_lam), bool(saliency_train)

    def check_input(self, input_shape) -> None:
        super().check_input(input_shape)
        if self.saliency == "sr" and int(input_shape[0]) not in (1, 3):
            raise PluginError(f"guidedmixup saliency: sr needs 1- or 3-channel images (the reference's "
                              f"grayscale), got {int(input_shape[0])} channels (use saliency: ap)")
        half = max(self.blur, self.sr_blur if self.saliency == "sr" else 0) // 2
        if min(int(v) for v in input_shape[1:]) <= half:
            raise PluginError(f"guidedmixup: a blur of size {2 * half + 1} needs images larger than "
                              f"{half}x{half} pixels, got {int(input_shape[1])}x{int(input_shape[2])}")

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "guidedmixup")
        self.check_input(tuple(ctx.train.x.shape[1:]))

    def raw_saliency(self, model: Model, x: torch.Tensor, y: torch.Tensor):
        """(saliency (B, H, W), the clean loss's CE still attached to the graph or None)."""
        if self.saliency == "sr":
            return spectral_residual(x, blur=self.sr_blur, sigma=3.0), None
        keep = self.clean_lam > 0
        return gradient_saliency(model, x, y, train=self.saliency_train or keep, keep_graph=keep)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y = batch.x, batch.y
        if float(ctx.rng.random()) > self.mix_prob:  # the reference: clean when mix_prob < rand()
            out = MixOutput.unmixed(model(x), y)
        else:
            sal, ce = self.raw_saliency(model, x, y)
            partner, mask = guided_masks(sal, self.blur, self.blur_sigma, self.pairing, ctx.rng)
            lam = mask.mean(dim=(-1, -2))
            m = mask.unsqueeze(1).to(x.dtype)
            mixed = m * x + (1 - m) * x[partner]
            out = MixOutput(model(mixed), y, y[partner], lam.float())
            if ce is not None:
                k = ctx.num_classes
                coef = 2 * self.clean_lam / k if self.criterion == "bce_softmax" else 2 * self.clean_lam
                main = (bce_of_softmax(out.logits, soft_targets(out, k)) if self.criterion == "bce_softmax"
                        else -(soft_targets(out, k) * F.log_softmax(out.logits.float(), 1)).sum(1).mean())
                out.loss = main + coef * ce
                return out
        if self.criterion == "bce_softmax":
            out.loss = bce_of_softmax(out.logits, soft_targets(out, ctx.num_classes))
        return out
