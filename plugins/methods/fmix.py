"""FMix (Harris et al., 2020): mixing with binarised low-frequency Fourier masks."""
from __future__ import annotations

import math

import numpy as np
import torch
from mixcli.mixing.boxes import check_images

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation, to_device


def spectrum_scale(h: int, w: int, decay_power: float, device) -> torch.Tensor:
    """``1 / max(|f|, 1 / max(H, W)) ** decay_power`` on the rfft grid (H, W // 2 + 1) of an H x W image."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / max(h, w))
    return (1.0 / freqs ** decay_power).float().to(device)


def low_freq_image(noise: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The grey-scale low-frequency image ``real(irfft2(scale * (a + ib)))`` for ``noise = (a, b)`` of shape
    (H, W // 2 + 1, 2), flattened to H W values."""
    return torch.fft.irfft2(scale * torch.complex(noise[..., 0], noise[..., 1]), s=(h, w)).reshape(-1)


def binarise(image: torch.Tensor, num: int, max_soft: float, lam: float) -> torch.Tensor:
    """The mask of FMix's ``binarise_mask``: 1 on the ``num`` largest values of ``image`` (flat, H W values),
    0 elsewhere; with ``max_soft`` > 0, the ``2 soft`` values ranked around ``num`` fall linearly from 1 to 0
    (``soft = int(H W min(max_soft, lam, 1 - lam))``). Its mean is ``num / (H W)`` in both cases."""
    size = image.numel()
    soft = int(size * (min(lam, 1 - lam) if max_soft > lam or max_soft > 1 - lam else max_soft))
    lo, hi = num - soft, num + soft
    vals = torch.zeros(size, device=image.device)
    vals[:lo] = 1.0
    vals[lo:hi] = torch.linspace(1.0, 0.0, hi - lo, device=image.device)
    order = image.argsort(descending=True)
    return torch.empty_like(vals).scatter_(0, order, vals)


class FMix(Method):
    """FMix: mix with a binarised low-frequency Fourier mask; lambda is the mask's mean.

    Harris, Marcu, Painter, Niranjan, Prügel-Bennett, Hare, "FMix: Enhancing Mixed Sample Data
    Augmentation", arXiv 2002.12047, 2020.

        lam ~ Beta(alpha, alpha)
        Z ~ N(0, 1) + i N(0, 1) on the rfft grid,  Z_f <- Z_f / max(|f|, 1 / max(H, W)) ** decay_power
        g = real(irfft2(Z));  M = 1 on the top ceil(lam H W) or floor(lam H W) pixels of g (even odds), 0 else
        x~ = M * x_i + (1 - M) * x_j;   y~ = lam' y_i + (1 - lam') y_j,  lam' = mean(M) = num / (H W)

    One mask and one lambda per batch (as the reference code), shared by all channels; ``x_j = x[perm]``.
    Defaults are the paper's: ``alpha`` 1.0 (OpenMixup uses 0.2 on CIFAR), ``decay_power`` 3.0,
    ``max_soft`` 0.0 (a hard mask; > 0 gives ``soft`` linear edges, see :func:`binarise`). The reference code
    weights the labels with the drawn lam; the mask's mean used here differs from it by < 1 / (H W).
    """

    family = "input"
    paper = "Harris et al., FMix: Enhancing Mixed Sample Data Augmentation, arXiv 2002.12047, 2020"
    needs = ("images",)

    def __init__(self, alpha: float = 1.0, decay_power: float = 3.0, max_soft: float = 0.0,
                 label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("decay_power", decay_power, 0)
        if not 0 <= max_soft <= 0.5:
            raise PluginError(f"max_soft must be in [0, 0.5], got {max_soft}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.decay_power, self.max_soft, self.smoothing = alpha, decay_power, max_soft, label_smoothing
        self._scale: dict = {}

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "fmix")

    def mask(self, ctx: Context, h: int, w: int, device) -> tuple[torch.Tensor, float]:
        """(mask of shape (1, 1, H, W) on ``device``, lam = its mean) for one batch."""
        key = (h, w, str(device))
        if key not in self._scale:
            self._scale[key] = spectrum_scale(h, w, self.decay_power, device)
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        noise = to_device(ctx.rng.standard_normal((h, w // 2 + 1, 2), dtype=np.float32), device)
        image = low_freq_image(noise, self._scale[key], h, w)
        num = math.ceil(lam * h * w) if ctx.rng.random() > 0.5 else math.floor(lam * h * w)
        return binarise(image, num, self.max_soft, lam).view(1, 1, h, w), num / (h * w)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        mask, lam = self.mask(ctx, x.shape[-2], x.shape[-1], x.device)
        mixed = torch.lerp(x[perm], x, mask.to(x.dtype))
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
