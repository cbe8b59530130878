"""SmoothMix (Lee, Zaheer, Astrid, Lee, CVPR Workshops 2020): blend a partner through a soft Gaussian window."""
from __future__ import annotations

import numpy as np
import torch

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation,
                        to_device)
from mixcli.mixing.boxes import check_images

LABELS = ("paper", "openmixup")


def smooth_mask(h: int, w: int, shift_h: int, shift_w: int, sigma: float) -> np.ndarray:
    """The Gaussian window G (H, W) in [0, 1] of OpenMixup's ``gaussian_kernel``, in closed form:
    ``G[a, b] = exp(-((a + c_h - shift_h - m_h)^2 + (b + c_w - shift_w - m_w)^2) / (2 sigma^2))`` with
    ``c = side // 2`` and ``m = side - 1/2`` (the centre of a 2-side grid whose middle side x side crop is
    kept, after rolling it by the shift): a Gaussian bump centred at ``(side / 2 - 1/2 + shift)``."""
    a = np.arange(h, dtype=np.float64) + h // 2 - shift_h - (h - 0.5)
    b = np.arange(w, dtype=np.float64) + w // 2 - shift_w - (w - 0.5)
    return np.exp(-(a[:, None] ** 2 + b[None, :] ** 2) / (2.0 * sigma * sigma)).astype(np.float32)


class SmoothMix(Method):
    """SmoothMix: blend the partner into the image through a Gaussian window; labels by the window's mass.

    Lee, Zaheer, Astrid, Lee, "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
    Classifiers", CVPR Workshops 2020 (no official code; the sampling is OpenMixup's ``smoothmix``).

        centre ~ U over the pixels (shift = U{0..H-1} - H/2 per axis);  sigma ~ U[0.25, 0.5) H
        G = Gaussian window of std sigma at the centre (:func:`smooth_mask`, values in (0, 1])
        x~ = (1 - G) x_i + G x_j;   y~ = (1 - g) y_i + g y_j,   g = mean(G)

    One window per batch, partners by a random permutation. ``label`` (paper): each label weighted by its
    image's share of the blend, as in the paper (its x~ = G x_i + (1 - G) x_j with lam = mean(G) on y_i is
    the same rule with the roles named the other way). ``label: openmixup`` reproduces OpenMixup, which
    blends x_j through G but puts mean(G) on y_i (the label weights swapped relative to the pixels). Like
    OpenMixup it has no lambda distribution (its ``alpha`` is unused there and absent here).
    """

    family = "input"
    paper = "Lee et al., SmoothMix, CVPR Workshops 2020"
    needs = ("images",)

    def __init__(self, sigma: list = (0.25, 0.5), label: str = "paper", prob: float = 1.0,
                 label_smoothing: float = 0.0):
        sigma = list(sigma)
        if not (len(sigma) == 2 and 0 < sigma[0] <= sigma[1]):
            raise PluginError(f"sigma must be [lo, hi] (fractions of the image height), 0 < lo <= hi, got {sigma}")
        if label not in LABELS:
            raise PluginError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.sigma, self.label, self.prob, self.smoothing = (float(sigma[0]), float(sigma[1])), label, prob, label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "smoothmix")

    def draw(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray | None:
        if self.prob < 1 and rng.random() >= self.prob:
            return None
        shift_w = int(rng.integers(0, w) - w / 2)
        shift_h = int(rng.integers(0, h) - h / 2)
        sigma = rng.uniform(*self.sigma) * h
        return smooth_mask(h, w, shift_h, shift_w, sigma)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        g = self.draw(ctx.rng, x.shape[-2], x.shape[-1])
        if g is None:
            return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(1.0, n, x.device), self.smoothing)
        share = float(g.mean())
        lam = share if self.label == "openmixup" else 1.0 - share
        m = to_device(g, x.device).to(x.dtype)
        mixed = torch.lerp(x, x[perm], m)
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
