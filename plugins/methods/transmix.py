"""TransMix (Chen, Sun, Wang, Yuille, Bai, CVPR 2022): CutMix labels re-weighted by the ViT's attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate, lam_tensor
from mixcli.mixing.boxes import paste
from mixcli.mixing.inputs import probe_input
from mixcli.mixing.switch import MixCutSwitch


def transmix_lam(attn: torch.Tensor, box, h: int, w: int) -> torch.Tensor:
    """The weight of the pasted image's label per row (the reference's ``transmix_label``), (B,):

        M = the box (y1, y2, x1, x2) as a 0/1 (H, W) mask, resized to the patch grid by nearest neighbour
        lam_area = |box| / (H W);   lam_attn = sum(M A) / sum(A)   (A = class-token attention, (B, Hp, Wp))
        lam = (lam_area + lam_attn) / 2
    """
    y1, y2, x1, x2 = box
    mask = torch.zeros(1, 1, h, w, device=attn.device)
    mask[..., y1:y2, x1:x2] = 1
    m = F.interpolate(mask, size=tuple(attn.shape[-2:]), mode="nearest")[0, 0]
    a = attn.float()
    inside, outside = (m * a).sum((1, 2)), ((1 - m) * a).sum((1, 2))
    lam_area = (y2 - y1) * (x2 - x1) / (h * w)
    return (lam_area + inside / (inside + outside)) / 2


class TransMix(MixCutSwitch, Method):
    """TransMix: timm's mixup / CutMix switch, with CutMix labels mixed by the class token's attention.

    Chen, Sun, Wang, Yuille, Bai, "TransMix: Attend to Mix for Vision Transformers", CVPR 2022; defaults of
    the reference (Beckschen/TransMix ``transmix.py``, ``configs/deit_s_transmix.yaml``).

        each batch: CutMix with probability switch_prob (box for lam ~ Beta(cutmix_alpha, cutmix_alpha)),
                    else mixup (lam ~ Beta(alpha, alpha), the plain mixup label)
        CutMix: A = last block's class-token attention of the mixed batch (head mean, detached; the same
                forward that is trained, :meth:`mixcli.api.Model.class_attention`)
                lam_b = (|box| / HW + sum(M A) / sum(A)) / 2       (:func:`transmix_lam`)
                y~ = (1 - lam_b) y_a + lam_b y_b

    Options as ``mixup`` in ``batch`` mode (one lambda and one choice per batch): ``alpha`` (0.8),
    ``cutmix_alpha`` (1.0), ``switch_prob`` (0.8), ``label_smoothing`` (0.1), ``prob``, ``cutmix_minmax``.
    The reference pairs row i with row B-1-i; here partners come from a random permutation. Needs a model with
    class-token attention (a ViT: ``model: {name: timm, arch: vit_..., img_size: 32, patch_size: 4}``).
    """

    family = "input"
    paper = "Chen et al., TransMix: Attend to Mix for Vision Transformers, CVPR 2022"
    needs = ("images", "class_attention")
    tasks = ("classification",)

    def __init__(self, alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.8,
                 label_smoothing: float = 0.1, prob: float = 1.0, cutmix_minmax: list | None = None):
        MixCutSwitch.__init__(self, alpha=alpha, prob=prob, mode="batch", cutmix_alpha=cutmix_alpha,
                              switch_prob=switch_prob, cutmix_minmax=cutmix_minmax, correct_lam=True)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.smoothing = label_smoothing
        if cutmix_alpha <= 0:
            raise PluginError("cutmix_alpha must be > 0: TransMix re-weights CutMix labels")

    def setup(self, ctx: Context) -> None:
        self.check_inputs(ctx, "transmix")
        with torch.no_grad():
            ctx.model.class_attention(probe_input(ctx, ctx.model))  # fails early without attention

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        perm, lam, cut, box = self.draw(ctx, n, h, w)
        perm = torch.from_numpy(perm).to(x.device, non_blocking=True)
        if cut[0]:
            b = tuple(int(v[0]) for v in box)
            logits, attn = model.class_attention(paste(x, perm, b))
            lam_t = 1 - transmix_lam(attn, b, h, w)
        else:
            lam_t = lam_tensor(float(lam[0]), n, x.device)
            logits = model(x if lam[0] == 1 else interpolate(x, perm, lam_t))
        return MixOutput(logits, batch.y, batch.y[perm], lam_t, self.smoothing)
