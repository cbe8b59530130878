"""CutMix (Yun et al., ICCV 2019), and the box helpers shared by the cutting methods.

Pure functions (no randomness of their own, callable with any values, e.g. those another library drew):
:func:`box_at` (the box for a ratio around a centre), :func:`cut_box` (its random draw),
:func:`box_lam` (lambda from a box's area), :func:`paste` (one box for the whole batch) and
:func:`box_mask` (boxes given as tensors or arrays, one per row or one for all, as a mask on the device).
"""
from __future__ import annotations

import numpy as np
import torch

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation, to_device


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
        if isinstance(rh, np.ndarray):  # one copy for both half sides
            rh, rw = to_device(np.stack([rh, rw]), cy.device)
        else:
            rh, rw = int(rh), int(rw)
        return ((cy - rh).clamp(min=0), (cy + rh).clamp(max=h), (cx - rw).clamp(min=0), (cx + rw).clamp(max=w))
    return (np.clip(cy - rh, 0, h), np.clip(cy + rh, 0, h), np.clip(cx - rw, 0, w), np.clip(cx + rw, 0, w))


def cut_box(lam, h: int, w: int, rng: np.random.Generator, minmax=None):
    """A random CutMix box ``(y1, y2, x1, x2)`` for ratio ``lam`` (a float: ints; an array: one box per entry).

    Default (Yun et al.; torchvision's CutMix; timm's ``rand_bbox``): centre uniform over the pixels, then
    :func:`box_at`. With ``minmax = (lo, hi)`` (timm's ``rand_bbox_minmax``): height and width drawn
    independently and uniformly from ``[int(lo H), int(hi H)]`` (resp. W), box placed uniformly inside the
    image; ``lam`` then only sets how many boxes to draw. (timm excludes both upper bounds, so its box never
    touches the bottom/right edge; here every placement inside the image is possible.)
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
        y1, y2, x1, x2 = (v.reshape(-1, 1) for v in box)
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


class CutMix(Method):
    """CutMix: paste a box from a partner image; labels mixed by the box's area.

    Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019.

        lam ~ Beta(alpha, alpha);  box: centre uniform, sides sqrt(1 - lam) (H, W), clipped to the image
        x~ = M * x_i + (1 - M) * x_j  with M = 0 inside the box (x_j = x[perm], perm a random permutation)
        y~ = lam' y_i + (1 - lam') y_j,  lam' = 1 - box_area / (H W)   (``correct_lam``; else lam' = lam)

    One box and one lambda per batch. Options (timm's names): ``alpha`` (1.0, the paper's; OpenMixup uses
    0.2 on CIFAR), ``prob`` (1.0: probability of mixing a batch; the paper uses 0.5 on CIFAR),
    ``minmax`` = [lo, hi] (none: box sides drawn uniformly as fractions of the image instead, and lambda is
    then always the box's area), ``correct_lam`` (true), ``label_smoothing`` (0.0).
    """

    family = "input"
    paper = "Yun et al., CutMix, ICCV 2019"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, minmax: list | None = None,
                 correct_lam: bool = True, label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.prob, self.minmax, self.correct = alpha, prob, check_minmax(minmax), correct_lam
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "cutmix")

    def draw(self, ctx: Context, h: int, w: int):
        """(lam, box) for one batch; lam is the label weight of the unpasted image, box None when unmixed."""
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return 1.0, None
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        box, lam = cutmix_draw(ctx.rng, lam, h, w, self.minmax, self.correct)
        return float(lam), box

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        lam, box = self.draw(ctx, x.shape[-2], x.shape[-1])
        if box is not None:
            x = paste(x, perm, box)
        return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
