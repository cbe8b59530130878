"""Boxes for the cutting methods (CutMix and its family), shared by the method plugins and users' loops.

Pure functions (no randomness of their own, callable with any values, e.g. those another library drew):
:func:`box_at` (the box for a ratio around a centre), :func:`cut_box` (its random draw),
:func:`box_lam` (lambda from a box's area), :func:`paste` (one box for the whole batch),
:func:`box_mask` (boxes given as tensors or arrays, one per row or one for all, as a mask on the device)
and :func:`mix_rows` (per-row interpolation or pasting through such a mask).
"""
from __future__ import annotations

import numpy as np
import torch

from ..api import Context, PluginError, to_device

__all__ = ["half_sides", "box_at", "cut_box", "box_lam", "paste", "box_mask", "cutmix_draw", "check_minmax",
           "check_images", "mix_rows"]


def half_sides(lam, h: int, w: int):
    """Half-sides ``(int(0.5 sqrt(1 - lam) H), int(0.5 sqrt(1 - lam) W))`` of the CutMix box (numpy ints;
    arrays for an array ``lam``). Equal to ``int(H sqrt(1 - lam)) // 2``, the reference code's form."""
    r = 0.5 * np.sqrt(1.0 - np.asarray(lam, dtype=np.float64))
    return (r * h).astype(np.int64), (r * w).astype(np.int64)


def box_at(cy, cx, lam, h: int, w: int):
    """The box ``(y1, y2, x1, x2)`` of ratio ``lam`` centred at ``(cy, cx)``, clipped to the image.

    ``cy``/``cx`` may be ints, numpy arrays or (device) tensors; the result has the same kind, so a centre
    found on the device (SaliencyMix) never goes through the host."""
    rh, rw = half_sides(lam, h, w)
    if isinstance(cy, torch.Tensor):
        if isinstance(rh, np.ndarray) and rh.ndim:  # one copy for both half sides
            rh, rw = to_device(np.stack([rh, rw]), cy.device)
        else:
            rh, rw = int(rh), int(rw)
        return ((cy - rh).clamp(min=0), (cy + rh).clamp(max=h), (cx - rw).clamp(min=0), (cx + rw).clamp(max=w))
    return (np.clip(cy - rh, 0, h), np.clip(cy + rh, 0, h), np.clip(cx - rw, 0, w), np.clip(cx + rw, 0, w))


def cut_box(lam, h: int, w: int, rng: np.random.Generator, minmax=None):
    """A random CutMix box ``(y1, y2, x1, x2)`` for ratio ``lam`` (a float: ints; an array: one box per entry).

    Default (Yun et al.'s reference code and torchvision's ``v2.CutMix``): centre uniform over the pixels,
    then :func:`box_at`: half-sides ``int(0.5 sqrt(1 - lam) H)`` on both sides of the centre, so the unclipped
    box has even sides ``2 int(0.5 sqrt(1 - lam) H)``. timm 1.0.31's ``rand_bbox`` differs: its sides are
    ``int(sqrt(1 - lam) H)`` split as ``cut // 2`` above and ``(cut + 1) // 2`` below the centre (odd sides
    possible), so for the same centre its box can be one pixel taller / wider.

    With ``minmax = (lo, hi)`` (as timm's ``rand_bbox_minmax``): height and width drawn independently and
    uniformly from ``[int(lo H), int(hi H)]`` (resp. W), box placed uniformly inside the image (every
    placement, touching the edges included, as timm's); ``lam`` then only sets how many boxes to draw. timm
    1.0.31 excludes the upper side bound (``np.random.randint(int(lo H), int(hi H))``): its sides are at
    most ``int(hi H) - 1``; here ``int(hi H)`` is possible.
    """
    size = None if np.ndim(lam) == 0 else np.shape(lam)
    if minmax is not None:
        ch = rng.integers(int(h * minmax[0]), int(h * minmax[1]) + 1, size=size)
        cw = rng.integers(int(w * minmax[0]), int(w * minmax[1]) + 1, size=size)
        y1, x1 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        box = (y1, y1 + ch, x1, x1 + cw)
    else:
        cy, cx = rng.integers(0, h, size=size), rng.integers(0, w, size=size)
        box = box_at(cy, cx, lam, h, w)
    return tuple(int(v) for v in box) if size is None else box


def box_lam(box, h: int, w: int):
    """``1 - box_area / (H W)``: the weight of the image the box is pasted into (works on ints, arrays and
    tensors)."""
    y1, y2, x1, x2 = box
    return 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)


def paste(x: torch.Tensor, perm: torch.Tensor, box) -> torch.Tensor:
    """``x`` with the region ``box = (y1, y2, x1, x2)`` (host ints, one box for the batch) of every row
    replaced by the same region of its partner ``x[perm]``."""
    y1, y2, x1, x2 = box
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[perm, ..., y1:y2, x1:x2]
    return out


def box_mask(box, h: int, w: int, device) -> torch.Tensor:
    """Boolean mask of shape (B, 1, H, W) that is True inside ``box = (y1, y2, x1, x2)``; each bound is a
    tensor or array of B values (one box per row) or of 1 value (one box for all rows)."""
    if all(isinstance(v, torch.Tensor) for v in box):
        y1, y2, x1, x2 = (v.to(device).reshape(-1, 1) for v in box)
    else:  # host bounds: one copy for the four of them
        y1, y2, x1, x2 = to_device(np.stack(np.broadcast_arrays(*(np.asarray(v).reshape(-1) for v in box))),
                                   device).unsqueeze(-1)
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = (ys >= y1) & (ys < y2)
    cols = (xs >= x1) & (xs < x2)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def cutmix_draw(rng: np.random.Generator, lam: float, h: int, w: int, minmax=None, correct_lam: bool = True):
    """(box, lam) for a drawn ratio ``lam`` (timm's ``cutmix_bbox_and_lam``): the box of :func:`cut_box`, and
    lambda replaced by the box's :func:`box_lam` when ``correct_lam`` or ``minmax`` is set. Works on a float
    or an array of ratios (one box each)."""
    box = cut_box(lam, h, w, rng, minmax)
    if correct_lam or minmax is not None:
        lam = box_lam(box, h, w)
    return box, lam


def check_minmax(minmax, name: str = "minmax"):
    if minmax is not None and not (len(minmax) == 2 and 0 < minmax[0] <= minmax[1] <= 1):
        raise PluginError(f"{name} must be [lo, hi] with 0 < lo <= hi <= 1, got {minmax}")
    return None if minmax is None else (float(minmax[0]), float(minmax[1]))


def check_images(ctx: Context, method: str) -> None:
    if ctx.train.x.dim() != 4:
        raise PluginError(f"{method} needs image inputs (N, C, H, W); this dataset has "
                          f"inputs of shape {tuple(ctx.train.x.shape[1:])}")


def mix_rows(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: the partner ``x[perm]`` where ``mask`` (B, 1, H, W) is True, else ``lam x + (1 - lam) x[perm]``
    (``lam`` of shape (B,); 1 for the CutMix rows, whose mask holds their box)."""
    xp = x[perm]
    if not x.dtype.is_floating_point:  # integer images (uint8): interpolated in float32, rounded back
        from ..api import interpolate
        return torch.where(mask, xp, interpolate(x, perm, lam))
    mixed = torch.lerp(xp, x, lam.view(-1, *[1] * (x.dim() - 1)).to(x.dtype))
    return torch.where(mask, xp, mixed)
