"""MixPro (Zhao, Huang, Hu, Zhang, Liu, ICLR 2023): MaskMix and Progressive Attention Labeling for ViTs."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate,
                        lam_tensor, to_device)
from mixcli.mixing.boxes import paste
from mixcli.mixing.switch import MixCutSwitch
from mixcli.mixing.tokens import check_patch_multiple, grid_to_pixels, hook_grid, meta_grid, smooth_one_hot


def maskmix_draw(rng: np.random.Generator, n: int, cells: int, alpha: float):
    """The reference's ``MaskMix`` draw for a batch of ``n`` on a ``cells`` x ``cells`` grid of mask cells:

        r ~ Beta(alpha, alpha)  (one per batch);  m = ceil(cells^2 r) cells kept;  lam = m / cells^2
        per row: the kept cells = the first m of a fresh permutation of the cells

    Returns ``(mask, lam)``: mask (n, cells, cells) of 0/1 (1: the row's own image), lam the weight of the
    row's own label (a float, the same for every row)."""
    count = cells * cells
    ratio = rng.beta(alpha, alpha)
    kept = int(np.ceil(count * ratio))
    mask = np.zeros((n, count), dtype=np.float32)
    for i in range(n):
        mask[i, rng.permutation(count)[:kept]] = 1
    return mask.reshape(n, cells, cells), kept / count


def pal_lam(attn: torch.Tensor, patch_mask: torch.Tensor, lam_area: torch.Tensor, logits: torch.Tensor,
            mixed_target: torch.Tensor, detach: bool = False) -> torch.Tensor:
    """Progressive Attention Labeling (the reference's ``PAL_ATTN`` branch), per row:

        lam_attn = sum(M A) / sum(A)           (A: class-token attention (B, Hp, Wp), M: the own-image patches)
        s = cos(y~, softmax(z))                (y~: the area-mixed smoothed target, z: the mixed logits)
        lam = s lam_attn + (1 - s) lam_area

    The reference keeps the gradient of s (through z); ``detach`` stops it (the paper treats s as a factor)."""
    a = attn.float()
    w1, w2 = (patch_mask * a).sum((1, 2)), ((1 - patch_mask) * a).sum((1, 2))
    lam_attn = w1 / (w1 + w2)
    p = F.softmax(logits.float(), dim=-1)
    sim = F.cosine_similarity(mixed_target, p.detach() if detach else p, dim=1)
    return sim * lam_attn + (1 - sim) * lam_area


class MixPro(Method):
    """MixPro: MaskMix (a patch-aligned grid mask) and Progressive Attention Labeling, for ViTs.

    Zhao, Huang, Hu, Zhang, Liu, "MixPro: Data Augmentation with MaskMix and Progressive Attention Labeling for
    Vision Transformer", ICLR 2023; defaults of the reference (fistyee/MixPro ``main.py``, ``utils.MaskMix``,
    ``configs/deit``).

        each batch, with probability maskmix_prob: MaskMix, else timm's mixup / CutMix switch (alpha 0.8,
            cutmix_alpha 1.0, switch_prob 0.5, the plain mixed label with label_smoothing)
        MaskMix: the image is cut into a g x g grid of cells of mask_size pixels (a multiple of the patch size)
            r ~ Beta(maskmix_alpha, maskmix_alpha); each row keeps m = ceil(g^2 r) random cells of its own
            image, the rest from its partner:  x~ = M x_a + (1 - M) x_b,  lam_area = m / g^2
        PAL (pal: true): lam = s lam_attn + (1 - s) lam_area with lam_attn = sum(M A) / sum(A) (A: the last
            block's class-token attention of the mixed image, M at the patch level), s = cos(y~, softmax(z))
            (:func:`pal_lam`);  loss = lam CE(z, y_a) + (1 - lam) CE(z, y_b)  (no label smoothing)
        pal: false: lam = lam_area, the smoothed mixed target (MaskMix alone)

    Options: ``maskmix_prob`` (0.5), ``maskmix_alpha`` (1.0), ``mask_size`` (pixels; null: the reference's
    proportion, 56 px cells on 224 px images, i.e. a quarter of the image side rounded down to a multiple of
    the patch size), ``pal`` (true), ``pal_detach`` (false: the reference back-propagates through s;
    true: s is a constant factor), and the switch's ``alpha``, ``cutmix_alpha``, ``switch_prob``, ``prob``,
    ``cutmix_minmax``, ``label_smoothing`` (0.1) as ``transmix``.

    Where this differs from the reference: the reference's shipped DeiT / Swin configs set ``PAL_ATTN: False``
    (MaskMix alone, ``pal: false`` here), while its paper's MixPro is MaskMix + PAL, the default here. Partners
    come from a random permutation (the reference permutes for MaskMix, and timm's mixup flips the batch).
    Needs a ViT with class-token attention (``model: {name: timm, arch: vit_..., img_size, patch_size}``).
    """

    family = "input"
    paper = "Zhao et al., MixPro: Data Augmentation with MaskMix and Progressive Attention Labeling for ViT, ICLR 2023"
    needs = ("images", "class_attention")
    tasks = ("classification",)

    def __init__(self, maskmix_prob: float = 0.5, maskmix_alpha: float = 1.0, mask_size: int | None = None,
                 pal: bool = True, pal_detach: bool = False, alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, prob: float = 1.0, cutmix_minmax: list | None = None,
                 label_smoothing: float = 0.1):
        check_range("maskmix_prob", maskmix_prob, 0, 1)
        check_range("maskmix_alpha", maskmix_alpha, 0, low_open=True)
        if mask_size is not None and (not isinstance(mask_size, int) or isinstance(mask_size, bool) or mask_size < 1):
            raise PluginError(f"mask_size must be a positive number of pixels (or null), got {mask_size!r}")
        for name, v in (("pal", pal), ("pal_detach", pal_detach)):
            if not isinstance(v, bool):
                raise PluginError(f"{name} must be true or false, got {v!r}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.switch = MixCutSwitch(alpha=alpha, prob=prob, mode="batch", cutmix_alpha=cutmix_alpha,
                                   switch_prob=switch_prob, cutmix_minmax=cutmix_minmax, correct_lam=True)
        self.maskmix_prob, self.maskmix_alpha, self.mask_size = maskmix_prob, maskmix_alpha, mask_size
        self.pal, self.pal_detach, self.smoothing = pal, pal_detach, label_smoothing
        self.grid = None

    def mask_pixels(self, h: int, gh: int) -> int:
        """The mask cell side in pixels for images of side ``h`` on a ``gh``-patch grid."""
        patch = h // gh
        if self.mask_size is None:
            return max(patch, (h // 4) // patch * patch)
        check_patch_multiple("mask_size", self.mask_size, h, gh)
        if self.mask_size > h:
            raise PluginError(f"mask_size {self.mask_size} is larger than the images ({h} pixels)")
        return self.mask_size

    def check_model(self, model: Model, input_shape) -> None:
        if len(input_shape) == 3:
            gh, _ = meta_grid(model, input_shape, ("class_attention",))
            self.mask_pixels(int(input_shape[1]), gh)

    def setup(self, ctx: Context) -> None:
        if ctx.train.x.dim() != 4:
            raise PluginError(f"mixpro needs image inputs (N, C, H, W); this dataset has inputs of shape "
                              f"{tuple(ctx.train.x.shape[1:])}")
        self.grid = hook_grid(ctx, ctx.model, ("class_attention",))
        self.mask_pixels(int(ctx.train.x.shape[-2]), self.grid[0])

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        if self.maskmix_prob > 0 and ctx.rng.random() < self.maskmix_prob:
            return self.maskmix(model, x, y, ctx)
        perm, lam, cut, box = self.switch.draw(ctx, n, h, w)
        perm = to_device(perm, x.device)
        lam_t = lam_tensor(float(lam[0]), n, x.device)
        if cut[0]:
            x = paste(x, perm, tuple(int(v[0]) for v in box))
        elif lam[0] != 1:
            x = interpolate(x, perm, lam_t)
        return MixOutput(model(x), y, y[perm], lam_t, self.smoothing)

    def maskmix(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> MixOutput:
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        gh, gw = self.grid if self.grid is not None else hook_grid(ctx, model, ("class_attention",))
        size = self.mask_pixels(h, gh)
        cells = math.ceil(h / size)
        perm = to_device(ctx.rng.permutation(n), x.device)
        ctx.extra["partners"] = perm  # this step's partners, for losses that read them (sumix)
        mask_np, lam_area = maskmix_draw(ctx.rng, n, cells, self.maskmix_alpha)
        mask = to_device(mask_np, x.device)
        pm = mask.repeat_interleave(size, 1).repeat_interleave(size, 2)[:, :h, :w].unsqueeze(1).to(x.dtype)
        xm = x * pm + x[perm] * (1 - pm)
        lam_a = lam_tensor(lam_area, n, x.device)
        if not self.pal:
            return MixOutput(model(xm), y, y[perm], lam_a, self.smoothing)
        logits, attn = model.class_attention(xm)
        patch = h // gh
        patch_mask = grid_to_pixels(mask, cells * (size // patch), cells * (size // patch))[:, 0, :gh, :gw]
        k = logits.shape[-1]
        mixed = lam_a[:, None] * smooth_one_hot(y, k, self.smoothing) + \
            (1 - lam_a[:, None]) * smooth_one_hot(y[perm], k, self.smoothing)
        lam = pal_lam(attn, patch_mask, lam_a, logits, mixed, self.pal_detach)
        return MixOutput(logits, y, y[perm], lam, 0.0, info={"pal_lam": lam.detach().mean()})
