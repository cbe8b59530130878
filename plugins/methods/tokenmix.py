"""TokenMix (Liu, Liu, Zhou, Liu, Li, ECCV 2022): token-level mask mixing with content-based labels for ViTs."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate,
                        lam_tensor, to_device)
from mixcli.mixing.switch import MixCutSwitch
from mixcli.mixing.tokens import grid_to_pixels, hook_grid, meta_grid, soft_ce_rows

MASK_TYPES = ("block", "random")
TARGETS = ("activation", "attention", "area")
LABELS = ("reference", "normalized")


def block_mask(rng: np.random.Generator, gh: int, gw: int, lam: float, min_tokens: int,
               min_patches: int = 1, min_aspect: float = 0.3):
    """The reference's ``generate_mask`` (BEiT-style block masking) on a gh x gw token grid, its draws from
    ``rng`` in the reference's order (``random.uniform`` -> ``rng.uniform``, ``random.randint(a, b)`` ->
    ``rng.integers(a, b + 1)``):

        target = min(N, int((1 - lam) N) + min_tokens) masked tokens (N = gh gw)
        repeat: up to 10 attempts at a block of area U(min_patches, target - masked) and aspect ratio
                exp(U(log min_aspect, log 1 / min_aspect)), h = round(sqrt(area r)), w = round(sqrt(area / r)),
                kept when h < gh and w < gw and it adds 1..(target - masked) new tokens; stop when the
                target is reached or an attempt round adds nothing

    Returns ``(mask, lam)``: mask (gh, gw) of 0/1 (1: the partner's token), lam = 1 - masked / N."""
    n = gh * gw
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    mask = np.zeros((gh, gw), dtype=np.int64)
    target = min(n, int((1 - lam) * n) + min_tokens)
    count = 0
    while count < target:
        left_over = min(target - count, n)
        delta = 0
        for _ in range(10):
            area = rng.uniform(min_patches, left_over)
            aspect = math.exp(rng.uniform(lo, hi))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if bw < gw and bh < gh:
                top, lft = int(rng.integers(0, gh - bh + 1)), int(rng.integers(0, gw - bw + 1))
                covered = int(mask[top:top + bh, lft:lft + bw].sum())
                if 0 < bh * bw - covered <= left_over:
                    block = mask[top:top + bh, lft:lft + bw]
                    delta += int((block == 0).sum())
                    block[...] = 1
                if delta > 0:
                    break
        if delta == 0:
            break
        count += delta
    return mask.astype(np.float32), 1 - count / n


def random_mask(rng: np.random.Generator, gh: int, gw: int, lam: float, min_tokens: int):
    """The reference's ``generate_mask_random``: ``min(N, int((1 - lam) N) + min_tokens)`` tokens of a random
    permutation are the partner's; returns ``(mask (gh, gw), lam = 1 - masked / N)``."""
    n = gh * gw
    k = min(n, int((1 - lam) * n) + min_tokens)
    mask = np.zeros(n, dtype=np.float32)
    mask[rng.permutation(n)[:k]] = 1
    return mask.reshape(gh, gw), 1 - k / n


def tokenmix_weights(maps: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor):
    """The reference's label weights from per-image content maps ``maps`` (B, Hp, Wp) of each image's own
    class and the token mask (Hp, Wp) (1: the partner's token):

        S_i = maps_i / (sum maps_i + 1e-8);   w_a = sum((1 - M) S_i);   w_b = sum(M S_perm(i))

    (the partner's share of its own content that lands in the mixed image). w_a + w_b is not 1 in general."""
    s = maps.float()
    s = s / (s.sum((1, 2), keepdim=True) + 1e-8)
    m = mask.float()
    return ((1 - m) * s).sum((1, 2)), (m * s[perm]).sum((1, 2))


def tokenmix_target(w_a: torch.Tensor, w_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, k: int,
                    smoothing: float) -> torch.Tensor:
    """The reference's soft target (``tokenmix.Mixup.__call__``): with off = s / K, one-hot rows

        t_a = (w_a - s/2 + off/2) on y_a, off/2 elsewhere;  t_b likewise with w_b on y_b;  target = t_a + t_b

    (so s/2 of smoothing is taken from each class whatever its weight, and the row sums to w_a + w_b)."""
    off = smoothing / k
    ta = torch.full((y_a.shape[0], k), off / 2, device=w_a.device).scatter_(
        1, y_a.view(-1, 1), (w_a - smoothing / 2 + off / 2).view(-1, 1).float())
    tb = torch.full((y_a.shape[0], k), off / 2, device=w_a.device).scatter_(
        1, y_b.view(-1, 1), (w_b - smoothing / 2 + off / 2).view(-1, 1).float())
    return ta + tb


class TokenMix(Method):
    """TokenMix: partner tokens pasted on a random block mask of the patch grid; labels by content.

    Liu, Liu, Zhou, Liu, Li, "TokenMix: Rethinking Image Mixing for Data Augmentation in Vision Transformers",
    ECCV 2022; defaults of the reference (Sense-X/TokenMix ``tokenmix.py``, ``main.py``,
    ``exp/deit_small/run.sh``).

        each batch: timm's switch (prob, switch_prob 0.5): mixup with lam ~ Beta(alpha, alpha) (the plain
                    smoothed label), else TokenMix
        TokenMix: a block mask M on the Hp x Wp token grid (:func:`block_mask`; ``mask_type: random``:
                  :func:`random_mask`) of min(N, int(mask_ratio N) + min_tokens) tokens (the reference fixes
                  mask_ratio = 0.5 whatever lambda was drawn); M lifted to pixels by nearest neighbour:
                  x~ = (1 - M) x_a + M x_b
                  labels from content maps C (B, Hp, Wp) of the clean images' own classes:
                  w_a = sum((1 - M) C_a / sum C_a),  w_b = sum(M C_b / sum C_b)      (:func:`tokenmix_weights`)
                  target = t_a + t_b (:func:`tokenmix_target`), loss = soft CE(z(x~), target)

    The reference's content maps are a pretrained teacher's dense score maps (NFNet-F6 label maps of
    TokenLabeling, computed offline for ImageNet). No such teacher exists here, so ``target`` chooses:
    ``activation`` (default): the model itself as the teacher: a no-gradient forward of the clean batch in
    eval mode, the classifier applied to each patch token, softmax over classes, the own class's
    probability per token (:meth:`mixcli.api.Model.patch_tokens`); ``attention``: the class token's
    attention over the patches of that forward (:meth:`mixcli.api.Model.class_attention`); ``area``: the
    mask area, w_a = 1 - |M| / N, w_b = |M| / N (a token-grid CutMix).

    ``labels: reference`` (default) trains on the reference's unnormalized target t_a + t_b with the soft
    cross-entropy (the method sets the loss, as the reference's criterion); ``labels: normalized`` reports
    lam = w_a / (w_a + w_b) as a plain mixed label, for any loss plugin (``decoupled``, ``sumix``).
    Options: ``alpha`` (0.8), ``cutmix_alpha`` (1.0, only as the switch's "mix by mask" side: the reference
    draws it and ignores it), ``switch_prob`` (0.5), ``prob`` (1.0), ``label_smoothing`` (0.1), ``mask_type``
    (block), ``mask_ratio`` (0.5), ``min_tokens`` (null: the reference's 14 tokens of its 14 x 14 grid,
    scaled to this grid: int(N / 14)). Partners come from a random permutation (the reference flips the
    batch). Needs a ViT (``model: {name: timm, arch: vit_..., img_size, patch_size}``).
    """

    family = "input"
    paper = "Liu et al., TokenMix: Rethinking Image Mixing for Data Augmentation in Vision Transformers, ECCV 2022"
    needs = ("images", "patch_tokens")
    tasks = ("classification",)

    def __init__(self, alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, label_smoothing: float = 0.1, mask_type: str = "block",
                 mask_ratio: float = 0.5, min_tokens: int | None = None, target: str = "activation",
                 labels: str = "reference"):
        if cutmix_alpha <= 0:
            raise PluginError("cutmix_alpha must be > 0: it switches TokenMix on (0 would leave plain mixup)")
        self.switch = MixCutSwitch(alpha=alpha, prob=prob, mode="batch", cutmix_alpha=cutmix_alpha,
                                   switch_prob=switch_prob)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        check_range("mask_ratio", mask_ratio, 0, 1)
        if mask_type not in MASK_TYPES:
            raise PluginError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
        if target not in TARGETS:
            raise PluginError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if labels not in LABELS:
            raise PluginError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
        if min_tokens is not None and (not isinstance(min_tokens, int) or isinstance(min_tokens, bool)
                                       or min_tokens < 0):
            raise PluginError(f"min_tokens must be an integer >= 0 (or null), got {min_tokens!r}")
        self.smoothing, self.mask_type, self.mask_ratio = label_smoothing, mask_type, mask_ratio
        self.min_tokens, self.target, self.labels = min_tokens, target, labels
        self.grid = None

    def requires(self) -> frozenset[str]:
        return frozenset({"images", "class_attention" if self.target == "attention" else "patch_tokens"})

    def _hooks(self) -> tuple[str, ...]:
        return ("class_attention",) if self.target == "attention" else ("patch_tokens",)

    def check_model(self, model: Model, input_shape) -> None:
        if len(input_shape) == 3:
            meta_grid(model, input_shape, self._hooks())

    def setup(self, ctx: Context) -> None:
        if ctx.train.x.dim() != 4:
            raise PluginError(f"tokenmix needs image inputs (N, C, H, W); this dataset has inputs of shape "
                              f"{tuple(ctx.train.x.shape[1:])}")
        self.grid = hook_grid(ctx, ctx.model, self._hooks())

    def draw_mask(self, rng: np.random.Generator, gh: int, gw: int):
        """(mask (gh, gw), lam) of one TokenMix batch."""
        k = self.min_tokens if self.min_tokens is not None else int(gh * gw / 14)
        fn = block_mask if self.mask_type == "block" else random_mask
        return fn(rng, gh, gw, 1 - self.mask_ratio, k)

    @torch.no_grad()
    def content_maps(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """C (B, Hp, Wp): each clean image's content map of its own class (see ``target``), no gradient,
        the model in eval mode for this forward."""
        was = model.training
        model.eval()
        try:
            if self.target == "attention":
                return model.class_attention(x)[1].float()
            _, tokens = model.patch_tokens(x)
            probs = F.softmax(model.classifier(tokens).float(), dim=-1)  # (B, Hp, Wp, K)
            return probs.gather(-1, y.view(-1, 1, 1, 1).expand(*probs.shape[:3], 1))[..., 0]
        finally:
            model.train(was)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        perm_np = ctx.rng.permutation(n)
        lam, cut = self.switch.params(ctx.rng, 1)
        perm = to_device(perm_np, x.device)
        ctx.extra["partners"] = perm  # this step's partners, for losses that read them (sumix)
        if not cut[0]:
            lam_t = lam_tensor(float(lam[0]), n, x.device)
            logits = model(x if lam[0] == 1 else interpolate(x, perm, lam_t))
            return MixOutput(logits, y, y[perm], lam_t, self.smoothing)
        gh, gw = self.grid if self.grid is not None else hook_grid(ctx, model, self._hooks())
        mask_np, lam_area = self.draw_mask(ctx.rng, gh, gw)
        mask = to_device(mask_np, x.device)
        pm = grid_to_pixels(mask[None], x.shape[-2], x.shape[-1]).to(x.dtype)
        xm = x * (1 - pm) + x[perm] * pm
        if self.target == "area":
            w_a = torch.full((n,), lam_area, device=x.device)
            w_b = 1 - w_a
        else:
            w_a, w_b = tokenmix_weights(self.content_maps(model, x, y), mask, perm)
        logits = model(xm)
        lam_n = w_a / (w_a + w_b).clamp_min(1e-8)
        out = MixOutput(logits, y, y[perm], lam_n, self.smoothing, info={"tokenmix_wa": w_a.mean()})
        if self.labels == "reference":
            out.loss = soft_ce_rows(logits, tokenmix_target(w_a, w_b, y, y[perm], logits.shape[-1],
                                                            self.smoothing)).mean()
        return out
