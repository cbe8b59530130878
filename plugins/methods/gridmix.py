"""GridMix (Baek, Bang, Shim, Pattern Recognition 2021): paste a grid of partner cells."""
from __future__ import annotations

import math

import numpy as np
import torch

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation,
                        to_device)
from mixcli.mixing.boxes import check_images


def _range(name: str, value, low: float, high: float | None = None) -> tuple[float, float]:
    """A number or [lo, hi] as (lo, hi), each within [low, high]."""
    v = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if len(v) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v) or v[0] > v[1]:
        raise PluginError(f"{name} must be a number or [lo, hi] with lo <= hi, got {value}")
    for a in v:
        check_range(name, a, low, high)
    return float(v[0]), float(v[1])


def grid_mask(h: int, w: int, lam: float, n_holes: int, hole_aspect_ratio: float, cut_area_ratio: float,
              cut_aspect_ratio: float, cx: float, cy: float) -> np.ndarray:
    """The GridMix mask (H, W) of 0/1 (1 = take the partner), as OpenMixup's ``rand_grid``.

    A crop of area ``int(H W cut_area_ratio)`` and aspect ``cut_aspect_ratio`` (``cut_w = int(sqrt(area /
    aspect))``, ``cut_h = int(cut_w aspect)``) starts at ``(int((W - cut_w) cx), int((H - cut_h) cy))``;
    it is tiled by cells of width ``pw = ceil(cut_w / n_holes)`` and height ``ph = int(pw hole_aspect_ratio)``,
    and each cell's top-left hole of ``int(pw sqrt(1 - lam))`` x ``int(ph sqrt(1 - lam))`` pixels (clamped to
    [1, side - 1]) is set. As in the reference, a crop larger than the image (area x aspect > 1) starts at a
    negative offset and its holes are painted with Python slice semantics (a negative start counts from the
    far edge), so such masks are the reference's exactly."""
    cut_area = int(h * w * cut_area_ratio)
    cut_w = int(math.sqrt(cut_area / cut_aspect_ratio))
    cut_h = int(cut_w * cut_aspect_ratio)
    xc, yc = int((w - cut_w) * cx), int((h - cut_h) * cy)
    pw = math.ceil(cut_w / n_holes)
    ph = int(pw * hole_aspect_ratio)
    ratio = math.sqrt(1.0 - lam)
    hw = min(max(int(pw * ratio), 1), pw - 1)
    hh = min(max(int(ph * ratio), 1), ph - 1)
    mask = np.zeros((h, w), dtype=np.float32)
    if ph < 1:
        return mask
    ny = math.ceil(cut_h / ph)
    for i in range(n_holes + 1):
        x1 = min(pw * i, cut_w)
        x2 = min(x1 + hw, cut_w)
        for j in range(ny + 1):
            y1 = min(ph * j, cut_h)
            y2 = min(y1 + hh, cut_h)
            mask[yc + y1:yc + y2, xc + x1:xc + x2] = 1.0
    return mask


class GridMix(Method):
    """GridMix: replace a regular grid of cells (inside a random crop) by the partner's; labels by area.

    Baek, Bang, Shim, "GridMix: Strong regularization through local context mapping", Pattern Recognition
    110, 2021; the mask construction of OpenMixup's ``gridmix`` (a port of the GridMixup code).

        lam ~ Beta(alpha, alpha);  n_holes ~ U{lo..hi};  hole_aspect, cut_area, cut_aspect ~ U[lo, hi]
        M = grid_mask(...)  (1 on the cells' holes, hole side ratio sqrt(1 - lam); see :func:`grid_mask`)
        x~ = (1 - M) x_i + M x_j;   y~ = lam' y_i + (1 - lam') y_j,   lam' = 1 - mean(M)

    One mask per batch, partners by a random permutation. Defaults are OpenMixup's (its CIFAR tables use
    alpha 0.2): ``n_holes`` [2, 6] cells across the crop, ``hole_aspect_ratio`` 1, ``cut_area_ratio``
    [0.5, 1], ``cut_aspect_ratio`` [0.5, 2]; each option is a number or a [lo, hi] range. OpenMixup asserts
    ``n_holes <= cut_w // 2``; here n_holes is clipped to that bound (small images: on 8x8 digits at most
    2-4 cells), and a crop too narrow for even one cell leaves the batch unmixed.
    """

    family = "input"
    paper = "Baek et al., GridMix, Pattern Recognition 2021"
    needs = ("images",)

    def __init__(self, alpha: float = 0.2, n_holes: list = (2, 6), hole_aspect_ratio: float = 1.0,
                 cut_area_ratio: list = (0.5, 1.0), cut_aspect_ratio: list = (0.5, 2.0), prob: float = 1.0,
                 label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        lo, hi = _range("n_holes", n_holes, 1)
        if lo != int(lo) or hi != int(hi):
            raise PluginError(f"n_holes must be whole numbers, got {n_holes}")
        self.n_holes = (int(lo), int(hi))
        self.hole_aspect = _range("hole_aspect_ratio", hole_aspect_ratio, 0.05, 20)
        self.cut_area = _range("cut_area_ratio", cut_area_ratio, 0.01, 1)
        self.cut_aspect = _range("cut_aspect_ratio", cut_aspect_ratio, 0.05, 20)
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.prob, self.smoothing = alpha, prob, label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "gridmix")

    def draw(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray | None:
        """The mask for one batch (None when unmixed), its random numbers in OpenMixup's order."""
        if self.prob < 1 and rng.random() >= self.prob:
            return None
        lam = rng.beta(self.alpha, self.alpha)
        n_holes = int(rng.integers(self.n_holes[0], self.n_holes[1] + 1))
        hole_aspect = rng.uniform(*self.hole_aspect)
        cut_area = rng.uniform(*self.cut_area)
        cut_aspect = rng.uniform(*self.cut_aspect)
        cx, cy = rng.random(), rng.random()
        cut_w = int(math.sqrt(int(h * w * cut_area) / cut_aspect))
        n_holes = min(n_holes, cut_w // 2)
        if n_holes < 1:
            return None
        return grid_mask(h, w, lam, n_holes, hole_aspect, cut_area, cut_aspect, cx, cy)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        mask = self.draw(ctx.rng, x.shape[-2], x.shape[-1])
        if mask is None:
            return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(1.0, n, x.device), self.smoothing)
        lam = 1.0 - float(mask.mean())
        m = to_device(mask, x.device).to(x.dtype)
        mixed = torch.lerp(x, x[perm], m)
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
