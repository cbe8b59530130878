"""SaliencyMix (Uddin et al., ICLR 2021): a CutMix box centred at the partner image's saliency peak.

The saliency detectors, batched torch on the device: :func:`fine_grained_saliency` (Montabone & Soto 2010,
OpenCV's ``StaticSaliencyFineGrained``, the official code's detector and the default) and
:func:`spectral_residual` (Hou & Zhang 2007, an option).
"""
from __future__ import annotations

import functools

import math

import torch
import torch.nn.functional as F
from mixcli.mixing.boxes import box_at, box_lam, box_mask, check_images

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation

DETECTORS = ("fine_grained", "spectral_residual")
NEIGHBORHOODS = (12, 24, 48, 28, 56, 112)  # OpenCV's six center-surround scales (3*4, 3*4*2, ..., 7*4*2*2)
BGR2GRAY_Q15 = (9798, 19235, 3735)         # OpenCV 5's fixed-point 8-bit luma weights of R, G, B (>> 15)
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


def gray_u8(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit grey levels (B, H, W) of images (B, C, H, W) with values 0..255 in RGB order: OpenCV's
    ``cvtColor(BGR2GRAY)`` of the same image in BGR order, bit-exact for OpenCV 5: ``(9798 R + 19235 G +
    3735 B + 2^14) >> 15`` (OpenCV 4 uses 14-bit weights, 4899, 9617, 1868, which differ by one grey level
    on about 0.25% of colours). One channel is used as is; other channel counts take the rounded mean."""
    p = pixels.round().clamp(0, 255).to(torch.int32)
    if p.shape[1] == 3:
        r, g, b = BGR2GRAY_Q15
        return ((p[:, 0] * r + p[:, 1] * g + p[:, 2] * b + (1 << 14)) >> 15).float()
    if p.shape[1] == 1:
        return p[:, 0].float()
    return p.float().mean(1).round()


def _blur3_u8(g: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(ksize 3x3, sigma 0)`` of 8-bit maps (B, H, W), bit-exact: the fixed kernel
    [1, 2, 1] / 4 in both directions, BORDER_REFLECT_101, rounded half up to an integer."""
    k = 2.0 - (torch.arange(3, device=g.device, dtype=torch.float32) - 1).abs()  # [1, 2, 1], made on the device
    s = g.unsqueeze(1)
    # torch's reflect = OpenCV's reflect-101; on a 1-pixel side OpenCV's reflect-101 repeats the pixel
    # (borderInterpolate gives 0), which torch's reflect refuses: replicate there, the same values
    for pad in ((1, 1, 0, 0), (0, 0, 1, 1)):
        side = s.shape[-1] if pad[0] else s.shape[-2]
        s = F.pad(s, pad, mode="reflect" if side > 1 else "replicate")
    s = F.conv2d(F.conv2d(s, k.view(1, 1, 1, 3)), k.view(1, 1, 3, 1))  # exact integers (<= 16 x 255)
    return torch.floor((s[:, 0] + 8) / 16)


def fine_grained_saliency(pixels: torch.Tensor) -> torch.Tensor:
    """Static fine-grained saliency (Montabone & Soto, 2010) of a batch, as OpenCV's
    ``saliency.StaticSaliencyFineGrained``: images (B, C, H, W) with pixel values 0..255 (RGB) ->
    8-bit maps (B, H, W) as float32 integers 0..255, batched on the device.

    Montabone, Soto, "Human detection using a mobile platform and novel features derived from a visual
    saliency mechanism", Image and Vision Computing 28(3), 2010. With ``g`` the grey image (:func:`gray_u8`)
    blurred twice by a 3x3 Gaussian (:func:`_blur3_u8`) and, for each neighborhood ``n`` of
    ``NEIGHBORHOODS``, ``m_n(p)`` the mean of ``g`` over the window rows/cols ``[p - n + 1, p + n]``
    (clipped to the image) without ``p`` itself::

        on_n(p)  = trunc(max(g(p) - m_n(p), 0)),   off_n(p) = trunc(max(m_n(p) - g(p), 0))   (center-surround)
        On  = trunc(255 sum_n on_n  / max_p sum_n on_n),   Off = trunc(255 sum_n off_n / max_p sum_n off_n)
        S   = trunc(255 (On + Off) / max(max_p On, max_p Off))       (mod 256, as OpenCV's cast to uchar)

    Every step follows OpenCV's arithmetic (integral image, float32 window means, truncating casts), so the
    map equals OpenCV's on 8-bit images (``tests/test_saliency_opencv.py`` checks it on natural images).
    """
    with torch.autocast(device_type=pixels.device.type, enabled=False):
        g = _blur3_u8(_blur3_u8(gray_u8(pixels.float())))
        b, h, w = g.shape
        integral = F.pad(g.double().cumsum(1).cumsum(2), (1, 0, 1, 0)).float()  # (B, H+1, W+1), exact
        rows = torch.arange(h, device=g.device)
        cols = torch.arange(w, device=g.device)
        on = torch.zeros_like(g)
        off = torch.zeros_like(g)
        for n in NEIGHBORHOODS:
            y1, y2 = (rows - n + 1).clamp(0, h), (rows + n + 1).clamp(0, h)
            x1, x2 = (cols - n + 1).clamp(0, w), (cols + n + 1).clamp(0, w)

            def at(ys, xs):
                return integral[:, ys][:, :, xs]
            total = at(y2, x2) + at(y1, x1) - at(y2, x1) - at(y1, x2)
            # no surround on a 1x1 image (area 0, total - g = 0): clamped so its mean is 0, not 0 / 0
            area = ((y2 - y1)[:, None] * (x2 - x1)[None, :] - 1).clamp(min=1).float()
            mean = (total - g) / area
            on += torch.trunc((g - mean).clamp(min=0))
            off += torch.trunc((mean - g).clamp(min=0))

        def rescale(v):  # trunc(255.0 * float32(v / max)); an all-zero map stays 0 (OpenCV: NaN -> 0)
            top = v.amax((1, 2), keepdim=True)
            r = torch.where(top > 0, v / top.clamp(min=1), torch.zeros_like(v))
            return torch.trunc(255.0 * r.double())
        on, off = rescale(on), rescale(off)
        top = torch.maximum(on.amax((1, 2), keepdim=True), off.amax((1, 2), keepdim=True))
        s = torch.where(top > 0, torch.trunc(255.0 * (on + off) / top.clamp(min=1)), torch.zeros_like(on))
    return torch.remainder(s, 256).float()


def saliency_peak(x: torch.Tensor, detector: str = "fine_grained", mean=None, std=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) tensors (B,) of the saliency maximum of each image (the first maximum of the flattened
    map in row-major order, as ``np.argmax``). ``fine_grained`` needs 0..255 pixel values: with ``mean`` and
    ``std`` (per channel, in [0, 1] units) the normalized batch is mapped back to them; without, each image
    is min-max scaled to 0..255. ``spectral_residual`` works on the batch as it is."""
    w = x.shape[-1]
    if detector == "fine_grained":
        s = fine_grained_saliency(to_pixels(x, mean, std))
    else:
        s = spectral_residual(x)
    peak = s.flatten(1).argmax(1)
    return peak // w, peak % w


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple, device: torch.device):
    """The per-channel mean and std as (1, C, 1, 1) float32 tensors on ``device``, copied there once."""
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device))


def to_pixels(x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """Normalized images back to 0..255 pixel values: ``255 (x std + mean)`` per channel, else a per-image
    min-max scaling."""
    x = x.float()
    if mean is not None and std is not None:
        m, s = _channel_stats(tuple(mean), tuple(std), x.device)
        return (255.0 * (x * s + m)).round().clamp(0, 255)
    lo = x.amin((1, 2, 3), keepdim=True)
    hi = x.amax((1, 2, 3), keepdim=True)
    return (255.0 * (x - lo) / (hi - lo).clamp(min=1e-12)).round()


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
    probability of mixing a batch; the official CIFAR command uses 0.5), ``label_smoothing`` (0.0),
    ``saliency``: ``fine_grained`` (default) is the official code's detector, OpenCV's
    StaticSaliencyFineGrained (Montabone & Soto, 2010), reimplemented in batched torch on the device
    (:func:`fine_grained_saliency`, equal to OpenCV's map on 8-bit images) so that no step waits on a CPU
    call; it runs on the partner's 8-bit pixels (the normalization undone with the dataset's mean and std).
    ``spectral_residual`` (Hou & Zhang, 2007; :func:`spectral_residual`) is another detector, kept as an
    option: on 300 natural 32x32 crops (scikit-learn's sample photographs) its peak is a median 18 px from
    the fine-grained one, so it is a different method.

    The official code hands OpenCV the normalized float tensor in RGB order. OpenCV's fine-grained code
    reads 8-bit pixels (``gray.at<uchar>``), so on a float image it reads single bytes of the float values:
    on the same 300 crops (CIFAR normalization) that peak agrees with the 8-bit image's in 0.3% of them
    (on the border in 14% of them, against 53% for the 8-bit image). That is an artefact of the input type,
    not of the algorithm, and it is not reproduced: mixcli runs the detector on the 8-bit image, as defined.
    """

    family = "input"
    paper = "Uddin et al., SaliencyMix, ICLR 2021"
    needs = ("images", "normalization")

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, label_smoothing: float = 0.0,
                 saliency: str = "fine_grained"):
        check_range("alpha", alpha, 0, low_open=True)
        if saliency not in DETECTORS:
            raise PluginError(f"saliency must be one of {', '.join(DETECTORS)}, got {saliency!r}")
        self.saliency = saliency
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.prob, self.smoothing = alpha, prob, label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "saliencymix")
        data = ctx.data
        self.mean, self.std = (data.mean, data.std) if data is not None else (None, None)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        perm = permutation(ctx, n)
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(1.0, n, x.device), self.smoothing)
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        cy, cx = saliency_peak(x[perm[:1]], self.saliency, getattr(self, "mean", None), getattr(self, "std", None))
        box = box_at(cy, cx, lam, h, w)
        mixed = torch.where(box_mask(box, h, w, x.device), x[perm], x)
        lam_t = box_lam(box, h, w).float().repeat(n)
        return MixOutput(model(mixed), batch.y, batch.y[perm], lam_t, self.smoothing)
