"""SaliencyMix (Uddin et al., ICLR 2021): a CutMix box centred at the partner image's saliency peak."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mixcli_plugins.methods.cutmix import box_at, box_lam, box_mask, check_images

from mixcli.api import Batch, Context, Method, MixOutput, Model, check_range, lam_tensor, permutation

WORK_WIDTH = 64    # Hou & Zhang compute the saliency of images shrunk to 64 pixels wide
BLUR_SIGMA = 2.5   # the Gaussian smoothing of their code (fspecial('gaussian', [10, 10], 2.5)) at that width
GRAY = (0.2989, 0.5870, 0.1140)


def _gaussian_blur(s: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps, radius 2 sigma, zero padding (MATLAB imfilter's)."""
    r = math.ceil(2 * sigma)
    t = torch.arange(-r, r + 1, dtype=s.dtype, device=s.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    s = F.conv2d(s, k.view(1, 1, -1, 1), padding=(r, 0))
    return F.conv2d(s, k.view(1, 1, 1, -1), padding=(0, r))


def spectral_residual(x: torch.Tensor) -> torch.Tensor:
    """Static spectral-residual saliency (Hou & Zhang, CVPR 2007) of a batch (B, C, H, W) -> (B, H, W).

    Grey image (ITU-R 601 weights for 3 channels, else the channel mean); with ``F = fft2(grey)``:
    ``R = log|F| - mean3x3(log|F|)`` (replicate padding), ``S = gauss_sigma * |ifft2(exp(R + i angle(F)))|^2``.
    As in Hou & Zhang's code, images wider than 64 pixels are first shrunk to 64 pixels wide (bicubic,
    antialiased), blurred with sigma 2.5 and the map resized back (bilinear); smaller images (CIFAR, digits)
    are not enlarged, which only blurs them and moves the peak off small objects, and use sigma 2.5 W / 64.
    All in float32.
    """
    b, c, h, w = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        if c == 3:
            g = torch.einsum("bchw,c->bhw", x, torch.tensor(GRAY, device=x.device)).unsqueeze(1)
        else:
            g = x.mean(1, keepdim=True)
        size = (max(1, round(WORK_WIDTH * h / w)), WORK_WIDTH) if w > WORK_WIDTH else (h, w)
        if (h, w) != size:
            g = F.interpolate(g, size=size, mode="bicubic", align_corners=False, antialias=True)
        f = torch.fft.fft2(g)
        log_amp = torch.log(f.abs().clamp(min=1e-12))
        residual = log_amp - F.avg_pool2d(F.pad(log_amp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        s = torch.fft.ifft2(torch.polar(torch.exp(residual), f.angle())).abs().square()
        s = _gaussian_blur(s, BLUR_SIGMA * size[1] / WORK_WIDTH)
        if (h, w) != size:
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
    return s[:, 0]


def saliency_peak(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) tensors (B,) of the saliency maximum of each image (argmax of the flattened map)."""
    w = x.shape[-1]
    peak = spectral_residual(x).flatten(1).argmax(1)
    return peak // w, peak % w


class SaliencyMix(Method):
    """SaliencyMix: paste the partner's most salient region (a CutMix-sized box at its saliency peak).

    Uddin, Monira, Shin, Chung, Bae, "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better
    Regularization", ICLR 2021.

        lam ~ Beta(alpha, alpha);  S = static saliency of the partner image x[perm[0]]
        box: sides int(sqrt(1 - lam) (H, W)) (even-rounded as CutMix) centred at argmax S, clipped
        x~ = x_i with the box of x_j pasted at the same place;  y~ = lam' y_i + (1 - lam') y_j,
        lam' = 1 - box_area / (H W)

    One box per batch, from the saliency of the first row's partner, exactly as the official code (and
    OpenMixup). Options: ``alpha`` (1.0, the paper's beta; OpenMixup uses 0.2 on CIFAR), ``prob`` (1.0:
    probability of mixing a batch; the official CIFAR command uses 0.5), ``label_smoothing`` (0.0).
    Saliency here is the spectral residual (Hou & Zhang, 2007; see :func:`spectral_residual`), computed on
    the device; the official code uses OpenCV's StaticSaliencyFineGrained (Montabone & Soto, 2010) on the CPU.
    """

    family = "input"
    paper = "Uddin et al., SaliencyMix, ICLR 2021"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.prob, self.smoothing = alpha, prob, label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "saliencymix")

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        perm = permutation(ctx, n)
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(1.0, n, x.device), self.smoothing)
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        cy, cx = saliency_peak(x[perm[:1]])
        box = box_at(cy, cx, lam, h, w)
        mixed = torch.where(box_mask(box, h, w, x.device), x[perm], x)
        lam_t = box_lam(box, h, w).float().repeat(n)
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_t, self.smoothing)
