"""Patch-grid helpers shared by the ViT mixers (``tokenmix``, ``mixpro``, ``smmix``): the model's patch grid
found through its hooks, masks on that grid lifted to pixels, and the one-line refusal of a model without
the hook a method needs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..api import Context, Model, PluginError
from .inputs import probe_input

__all__ = ["hook_grid", "meta_grid", "check_patch_multiple", "grid_to_pixels", "soft_ce_rows", "smooth_one_hot"]


def _grid(out, hook: str) -> tuple[int, int]:
    t = out[1]
    if hook == "patch_tokens":
        return int(t.shape[1]), int(t.shape[2])
    return int(t.shape[-2]), int(t.shape[-1])


def hook_grid(ctx: Context, model: Model, hooks: tuple[str, ...]) -> tuple[int, int]:
    """The (Hp, Wp) patch grid of ``model``, running each hook in ``hooks`` once on a probe batch (so that a
    model without one fails at set-up, with its one-line PluginError)."""
    grid = None
    with torch.no_grad():
        x = probe_input(ctx, model)
        for hook in hooks:
            grid = _grid(getattr(model, hook)(x), hook)
    return grid


def meta_grid(model: Model, input_shape, hooks: tuple[str, ...]) -> tuple[int, int]:
    """As :func:`hook_grid` for ``Method.check_model`` (a model built on the meta device: shapes only)."""
    grid = None
    x = torch.zeros(2, *input_shape, device="meta")
    for hook in hooks:
        grid = _grid(getattr(model, hook)(x), hook)
    return grid


def check_patch_multiple(name: str, size: int, h: int, gh: int) -> int:
    """The patch side ``h // gh``; ``size`` (pixels) must be a multiple of it (one PluginError line)."""
    patch = h // gh
    if size % patch:
        raise PluginError(f"{name} must be a multiple of the model's patch size {patch}, got {size}")
    return patch


def grid_to_pixels(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A (B, gh, gw) mask on a grid of cells as a (B, 1, h, w) pixel mask: each cell repeated over its
    ``ceil(h / gh)`` x ``ceil(w / gw)`` pixels, cropped to h x w (the reference codes' ``repeat`` + crop; on
    an exact grid this is nearest-neighbour upsampling)."""
    gh, gw = mask.shape[-2:]
    sh, sw = -(-h // gh), -(-w // gw)
    m = mask.repeat_interleave(sh, dim=-2).repeat_interleave(sw, dim=-1)
    return m[..., :h, :w].unsqueeze(1)


def smooth_one_hot(y: torch.Tensor, k: int, smoothing: float) -> torch.Tensor:
    """timm's smoothed one-hot: ``1 - s + s / K`` on the class, ``s / K`` elsewhere (float32)."""
    off = smoothing / k
    out = torch.full((y.shape[0], k), off, device=y.device, dtype=torch.float32)
    return out.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def soft_ce_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's ``SoftTargetCrossEntropy`` per row: ``-sum_k target_k log softmax(logits)_k`` (float32)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
