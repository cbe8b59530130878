"""Common corruptions (CIFAR-10-C style), generated on the device from the test split.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019. The parameters of the five severities are those of their CIFAR generator (``make_cifar_c.py``);
each function maps a batch of images ``x`` in [0, 1], shape (B, C, H, W), to the corrupted batch, which is
then truncated to the 1/255 grid as the reference's ``np.uint8(...)`` does. Differences from the reference,
all on the device and batched:

- gaussian / defocus blur: separable Gaussian with skimage's defaults (truncate 4 sigma, edge padding) and
  the anti-aliased disk of ``disk()`` (a 17x17 grid cut to its support) with reflect-101 borders (cv2).
- brightness / saturate: RGB <-> HSV in float (skimage's formulas); saturate does not apply to grey images
  (it is left out for them), brightness on grey images is ``clip(x + c)`` (V = the grey value).
- jpeg_compression: baseline JPEG as libjpeg does it (JFIF YCbCr, 4:2:0 chroma subsampling for colour
  images, 8x8 DCT, the IJG quality-scaled standard tables, rounding), with fancy (triangle) chroma upsampling
  as bilinear interpolation; within a few grey levels of PIL's encoder, not bit-exact.
- pixelate: PIL's BOX resampling (down to ``int(c * size)``, back up) as two resampling matrices. Its
  damage follows c on detailed images but not always on very smooth or tiny ones (8x8 digits: severities 4
  and 5 resample to 6 and 5 pixels, and 5 aliases less), exactly as in the reference.
- Noise is drawn from the evaluator's private generator, so results are reproducible per seed and epoch.

The other corruptions of CIFAR-10-C (glass, motion and zoom blur, snow, frost, fog, spatter, elastic
transform) and JPEG through PIL's encoder are in :mod:`mixcli.data.cifar_c`; the torch JPEG
below (:func:`jpeg`) is no longer what ``jpeg_compression`` uses (it differed from PIL by up to 21 grey
levels).

The sets: :data:`STANDARD` are the 15 corruptions of CIFAR-10-C's benchmark (the reference's first 15, in
its order), :data:`EXTRA` the 4 it releases as held-out extras (speckle noise, gaussian blur, spatter,
saturate); ``corruption_error`` is computed over the standard ones only.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import EvalContext, Evaluator, PluginError, metric
from mixcli.data import cifar_c

# the reference's CIFAR parameters for severities 1..5, and the parameter that leaves an image unchanged
PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
}
IDENTITY: dict[str, object] = {
    "gaussian_noise": 0.0, "shot_noise": math.inf, "impulse_noise": 0.0, "speckle_noise": 0.0,
    "gaussian_blur": 0.0, "defocus_blur": (0, 0.0), "contrast": 1.0, "brightness": 0.0, "saturate": (1, 0),
    "jpeg_compression": 100, "pixelate": 1.0,
}
#: the 15 benchmark corruptions of CIFAR-10-C, in the reference's order
STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression")
#: the 4 extra corruptions the reference also generates and releases
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
GENERATED = STANDARD + EXTRA  # every one is generated on the device
#: the file names of the released CIFAR-10-C / CIFAR-100-C (``<name>.npy`` + ``labels.npy``)
CIFAR_C = GENERATED
DEFAULT_FROST_DIR = "~/.cache/mixcli/data/frost"


# --------------------------------------------------------------------------------------------- helpers
def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and truncate to the 1/255 grid (the reference's ``np.uint8`` of ``x * 255``)."""
    return torch.floor(x.clamp(0, 1) * 255.0 + 1e-4) / 255.0


def _conv_sep(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    """Separable 2-D filtering of every channel with the 1-D kernel ``k`` (odd length), padding ``mode``."""
    r = k.numel() // 2
    if r == 0:
        return x * k[0]
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def gaussian_kernel(sigma: float, device) -> torch.Tensor:
    """skimage.filters.gaussian's 1-D kernel: radius ``int(4 sigma + 0.5)``, normalized."""
    if sigma <= 0:
        return torch.ones(1, device=device)
    r = int(4.0 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float().to(device)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's anti-aliased disk: the indicator of ``X^2 + Y^2 <= radius^2`` on a 17x17 grid, summing to
    1, blurred by a 3x3 Gaussian of sigma ``alias_blur`` (cv2.GaussianBlur), then cut to its support."""
    ar = torch.arange(-8, 9, dtype=torch.float64)
    d = ((ar[:, None] ** 2 + ar[None, :] ** 2) <= radius ** 2).double()
    d /= d.sum()
    if alias_blur > 0:
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias_blur ** 2))
        g /= g.sum()
        p = F.pad(d[None, None], (1, 1, 1, 1), mode="reflect")  # cv2's default border, reflect-101
        d = F.conv2d(F.conv2d(p, g.view(1, 1, 1, 3)), g.view(1, 1, 3, 1))[0, 0]
    nz = torch.nonzero(d > 0)
    r = int(max((nz - 8).abs().max().item(), 0))
    return d[8 - r:9 + r, 8 - r:9 + r].float()


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(1)
    mn, _ = x.min(1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    dd = delta.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / dd, torch.where(v == g, 2.0 + (b - r) / dd, 4.0 + (r - g) / dd))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, rgb in enumerate(table):
        m = i == k
        for c in range(3):
            out[c] = torch.where(m, rgb[c], out[c])
    return torch.stack(out, 1)


@functools.lru_cache(maxsize=64)
def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """PIL's BOX resampling from n_in to n_out samples as an (n_out, n_in) matrix (ImagingResample's
    coefficients: support 0.5 * scale, box weights 1 on (-0.5, 0.5], each row normalized)."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 0.5 * fs
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j - center + 0.5) / fs
            m[i, j] = 1.0 if -0.5 < u <= 0.5 else 0.0
        m[i] /= m[i].sum()
    return m.float()


def _resize_box(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    rh = _box_matrix(x.shape[2], h).to(x.device)
    rw = _box_matrix(x.shape[3], w).to(x.device)
    return torch.round(torch.einsum("ij,bcjk,lk->bcil", rh, x, rw) * 255.0) / 255.0  # PIL rounds to uint8


_Y = (0.299, 0.587, 0.114)
_STD_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_STD_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
               47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def quant_table(base: list[int], quality: int) -> torch.Tensor:
    """The IJG quality scaling: ``s = 5000/q`` (q < 50) else ``200 - 2q``; ``Q = clip((B s + 50) // 100, 1, 255)``."""
    q = min(max(int(quality), 1), 100)
    s = 5000 // q if q < 50 else 200 - 2 * q
    return torch.tensor([min(max((b * s + 50) // 100, 1), 255) for b in base], dtype=torch.float32).view(8, 8)


def _dct_matrix(device) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    m[0] /= math.sqrt(2)
    return m.float().to(device)  # orthonormal 8-point DCT-II


def _jpeg_plane(p: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT-quantize-dequantize-IDCT one level-shifted plane (B, H, W) in 0..255 units, H and W multiples of 8."""
    b, h, w = p.shape
    d = _dct_matrix(p.device)
    blocks = (p - 128.0).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    q = table.to(p.device)
    coef = torch.round(coef / q) * q
    out = d.T @ coef @ d
    return out.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128.0


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Baseline JPEG round trip of images in [0, 1] (module docstring)."""
    b, c, h, w = x.shape
    mult = 16 if c == 3 else 8
    ph, pw = -h % mult, -w % mult
    v = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255.0
    luma, chroma = quant_table(_STD_LUMA, quality), quant_table(_STD_CHROMA, quality)
    if c != 3:
        out = torch.stack([_jpeg_plane(torch.round(v[:, i]), luma) for i in range(c)], 1)
    else:
        r, g, bl = v[:, 0], v[:, 1], v[:, 2]
        y = _Y[0] * r + _Y[1] * g + _Y[2] * bl
        cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0
        cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0
        y = _jpeg_plane(torch.round(y), luma)
        sub = lambda t: F.avg_pool2d(t[:, None], 2)[:, 0]  # noqa: E731 - 4:2:0 subsampling
        up = lambda t: F.interpolate(t[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
        cb = up(_jpeg_plane(torch.round(sub(cb)), chroma))
        cr = up(_jpeg_plane(torch.round(sub(cr)), chroma))
        out = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                           y + 1.772 * (cb - 128)], 1)
    out = torch.round(out).clamp(0, 255)[:, :, :h, :w]
    return out / 255.0


# ------------------------------------------------------------------------------------------ corruptions
def corrupt(x: torch.Tensor, name: str, param, gen: torch.Generator | None = None) -> torch.Tensor:
    """Corruption ``name`` with parameter ``param`` (see PARAMS) applied to images ``x`` in [0, 1]; not
    quantized (``apply`` does that)."""
    dev = x.device
    if name == "gaussian_noise":
        return x + torch.randn(x.shape, device=dev, generator=gen) * param
    if name == "shot_noise":
        return x if math.isinf(param) else torch.poisson(x * param, generator=gen) / param
    if name == "impulse_noise":  # skimage random_noise(mode='s&p', amount, salt_vs_pepper=0.5), per value
        flip = torch.rand(x.shape, device=dev, generator=gen) < param
        salt = torch.rand(x.shape, device=dev, generator=gen) < 0.5
        return torch.where(flip, salt.to(x.dtype), x)
    if name == "speckle_noise":
        return x + x * torch.randn(x.shape, device=dev, generator=gen) * param
    if name == "gaussian_blur":
        return _conv_sep(x, gaussian_kernel(param, dev), "replicate")
    if name == "defocus_blur":
        k = disk_kernel(*param).to(dev)
        r = k.shape[0] // 2
        if r == 0:
            return x * k[0, 0]
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="reflect")
        return F.conv2d(y, k.view(1, 1, *k.shape)).reshape(b, c, h, w)
    if name == "contrast":
        means = x.mean(dim=(2, 3), keepdim=True)
        return (x - means) * param + means
    if name == "brightness":
        if x.shape[1] != 3:
            return x + param
        hsv = rgb_to_hsv(x)
        hsv = torch.stack([hsv[:, 0], hsv[:, 1], (hsv[:, 2] + param).clamp(0, 1)], 1)
        return hsv_to_rgb(hsv)
    if name == "saturate":
        if x.shape[1] != 3:
            raise ValueError("saturate needs RGB images")
        hsv = rgb_to_hsv(x)
        hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * param[0] + param[1]).clamp(0, 1), hsv[:, 2]], 1)
        return hsv_to_rgb(hsv)
    if name == "jpeg_compression":
        return jpeg(x, param)
    if name == "pixelate":
        h, w = x.shape[2:]
        small = _resize_box(x, max(1, int(h * param)), max(1, int(w * param)))
        return _resize_box(small, h, w)
    raise ValueError(f"unknown corruption {name!r}")


def apply(x: torch.Tensor, name: str, severity: int, gen: torch.Generator | None = None,
          frost_images=None) -> torch.Tensor:
    """Corruption ``name`` at ``severity`` 1..5 (0: the image unchanged), quantized to the 1/255 grid."""
    if severity == 0:
        return x
    if name in cifar_c.PARAMS:
        return quantize(cifar_c.corrupt(x, name, cifar_c.PARAMS[name][severity - 1], gen, frost_images))
    return quantize(corrupt(x, name, PARAMS[name][severity - 1], gen))


def applies(name: str, channels: int) -> bool:
    return not (name == "saturate" and channels != 3)


class Corruptions(Evaluator):
    """Accuracy on common corruptions of the test split (CIFAR-10-C), generated on the device.

    For each corruption c and severity s (1..5, Hendrycks & Dietterich's CIFAR parameters: ``PARAMS`` here
    and in :mod:`mixcli.data.cifar_c`) the test accuracy ``A_{c,s}`` on the corrupted test
    images. With ``S`` the corruptions of the set that are among the 15 standard ones (:data:`STANDARD`):
    ``corruption_accuracy = mean_{c in S} mean_s A_{c,s}`` and ``corruption_error = mean_{c in S} mean_s
    (1 - A_{c,s})``, the unnormalized mean corruption error CIFAR papers report (e.g. AugMix; ImageNet-C's
    AlexNet normalization does not exist for CIFAR); with the default set S is all 15, and neither metric
    is reported when S is empty. The 4 extras (:data:`EXTRA`) only get their own ``corruption_<c>``, the
    accuracy on c averaged over the severities, as every corruption does. Each evaluation writes
    ``corruption_set.json`` (the corruptions and severities evaluated, which of them the two means cover,
    whether they are the full standard 15, generated or read from files) to the run's folder.

    ``corruptions``: a list of names (default: the 15 standard ones). ``frost`` needs
    the reference's frost pictures (not shipped with mixcli): ``frost1.png`` .. ``frost5.jpg`` of
    ``hendrycks/robustness`` ``ImageNet-C/create_c/`` in ``frost_dir`` (default
    ``~/.cache/mixcli/data/frost``), or ``download: true`` to fetch them there (their git hashes are
    checked). ``path``: a folder holding the released CIFAR-10-C / CIFAR-100-C files (``<corruption>.npy``,
    5 x 10000 images of severities 1..5, and ``labels.npy``), used instead of generated images.
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.
    """

    paper = "Hendrycks & Dietterich, Benchmarking Neural Network Robustness to Common Corruptions, ICLR 2019"
    path_options = ("path", "frost_dir")  # relative to the experiment file's folder, like every path of the file
    metrics = (metric("corruption_accuracy", True, percent=True,
                      doc="mean test accuracy over the standard corruptions evaluated (all 15 by default) "
                          "and severities 1-5"),
               metric("corruption_error", False, percent=True,
                      doc="mean corruption error over the standard corruptions evaluated (all 15 by default)"),
               *(metric(f"corruption_{c}", True, percent=True, doc=f"test accuracy under {c}, mean over severities")
                 for c in GENERATED))

    def __init__(self, corruptions: list = STANDARD, severities: list = (1, 2, 3, 4, 5), path: str = None,
                 frost_dir: str = DEFAULT_FROST_DIR, download: bool = False):
        if not isinstance(corruptions, (list, tuple)) or not corruptions:
            raise PluginError(f"corruptions must be a non-empty list of names, got {corruptions!r}")
        for c in corruptions:
            if c not in GENERATED:
                raise PluginError(f"unknown corruption {c!r}; expected some of {', '.join(GENERATED)}")
        if len(set(corruptions)) != len(corruptions):
            raise PluginError(f"corruptions lists a name twice: {list(corruptions)}")
        if not isinstance(severities, (list, tuple)) or not severities or \
                any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 5 for s in severities):
            raise PluginError(f"severities must be a non-empty list of integers in 1..5, got {severities!r}")
        if path is not None and not isinstance(path, str):
            raise PluginError(f"path must be a folder (a string), got {path!r}")
        if not isinstance(frost_dir, str) or not frost_dir.strip():
            raise PluginError(f"frost_dir must be a folder (a string), got {frost_dir!r}")
        if not isinstance(download, bool):
            raise PluginError(f"download must be true or false, got {download!r}")
        if path is not None:
            path = os.path.expanduser(path)
            if not os.path.isdir(path):
                raise PluginError(f"path {path}: no such folder (expected the released CIFAR-10-C/100-C folder "
                                  "with labels.npy and <corruption>.npy files; leave path out to generate them)")
            missing = [f for f in ["labels.npy"] + [f"{c}.npy" for c in corruptions]
                       if not os.path.isfile(os.path.join(path, f))]
            if missing:
                raise PluginError(f"path {path}: no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                                  "(expected the released CIFAR-10-C/100-C files)")
        self.corruptions, self.severities, self.path = list(corruptions), list(severities), path
        self.frost_dir, self.download = os.path.expanduser(frost_dir), download
        self._frost = None
        if not path and "frost" in self.corruptions and not download:  # validate refuses what run would
            missing = [f for f in cifar_c.FROST_FILES if not os.path.isfile(os.path.join(self.frost_dir, f))]
            if missing:
                raise PluginError(f"frost needs the reference's frost pictures in frost_dir {self.frost_dir} "
                                  f"(missing {', '.join(missing)}): copy frost1.png .. frost5.jpg from "
                                  "github.com/hendrycks/robustness ImageNet-C/create_c/, set download: true, or "
                                  "leave frost out of corruptions")

    def check_config(self, config: dict, dataset) -> None:
        try:
            shape = dataset.shape() if dataset is not None else None
        except Exception:  # noqa: BLE001 - unknown until the data loads
            shape = None
        if shape is not None and len(shape[0]) != 3:
            raise PluginError(f"corruptions need an image dataset, and dataset '{config['dataset']['name']}' has "
                              f"features of shape {tuple(shape[0])}")

    def check(self, data) -> None:
        if data.test.x.dtype != torch.uint8 or data.test.x.dim() != 4:
            raise PluginError("corruptions need an image dataset (uint8 images), not float features")
        if not self.path and "frost" in self.corruptions:
            self._frost = cifar_c.frost_pictures(self.frost_dir, self.download)

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        acc = self._released(model, ctx) if self.path else self._generated(model, ctx)
        out = {f"corruption_{c}": float(np.mean(a)) for c, a in acc.items()}
        std = [c for c in acc if c in STANDARD]
        if std:
            out["corruption_accuracy"] = float(np.mean([np.mean(acc[c]) for c in std]))
            out["corruption_error"] = float(np.mean([1 - np.mean(acc[c]) for c in std]))
        if ctx.artifacts_dir is not None:
            record = {"epoch": ctx.epoch, "source": "released files " + self.path if self.path else "generated",
                      "corruptions": list(acc), "severities": self.severities, "error_over": std,
                      "standard_15": sorted(std) == sorted(STANDARD),
                      "not_applicable": [c for c in self.corruptions if c not in acc]}
            import json

            os.makedirs(ctx.artifacts_dir, exist_ok=True)
            with open(os.path.join(ctx.artifacts_dir, "corruption_set.json"), "w") as f:
                json.dump(record, f, indent=1)
        return out

    def _generated(self, model, ctx: EvalContext) -> dict[str, list[float]]:
        channels = ctx.splits["test"].x.shape[1]
        if "frost" in self.corruptions and self._frost is None:
            self._frost = cifar_c.frost_pictures(self.frost_dir, self.download)
        acc: dict[str, list] = {}
        for c in (c for c in self.corruptions if applies(c, channels)):
            for s in self.severities:
                correct = torch.zeros((), device=ctx.device)
                n = 0
                for p, y in ctx.batches("test"):
                    xs = apply(p, c, s, ctx.generator, self._frost)
                    correct += (ctx.logits(model, xs).argmax(1) == y).sum()
                    n += len(y)
                acc.setdefault(c, []).append(correct / n)
        return {c: [float(a) for a in v] for c, v in acc.items()}  # one host sync per corruption set

    def _released(self, model, ctx: EvalContext) -> dict[str, list[float]]:
        labels_path = os.path.join(self.path, "labels.npy")
        if not os.path.isfile(labels_path):
            raise PluginError(f"path {self.path}: no labels.npy (expected the CIFAR-10-C/100-C folder)")
        labels = torch.from_numpy(np.load(labels_path, allow_pickle=False).astype(np.int64))
        shape = tuple(ctx.splits["test"].x.shape[1:])
        acc: dict[str, list] = {}
        for c in self.corruptions:
            f = os.path.join(self.path, f"{c}.npy")
            if not os.path.isfile(f):
                raise PluginError(f"path {self.path}: no {c}.npy")
            imgs = np.load(f, mmap_mode="r", allow_pickle=False)
            n = len(imgs) // 5
            if imgs.ndim != 4 or (imgs.shape[3], imgs.shape[1], imgs.shape[2]) != shape or len(labels) != len(imgs):
                raise PluginError(f"{f}: images of shape {imgs.shape[1:]} (HWC) and {len(labels)} labels do not "
                                  f"fit this dataset's {shape} (CHW) test images")
            for s in self.severities:
                correct = torch.zeros((), device=ctx.device)
                for i in range((s - 1) * n, s * n, ctx.batch_size):
                    j = min(i + ctx.batch_size, s * n)
                    x = torch.from_numpy(np.array(imgs[i:j])).permute(0, 3, 1, 2).to(ctx.device)
                    y = labels[i:j].to(ctx.device)
                    correct += (ctx.logits(model, ctx.pixels(x)).argmax(1) == y).sum()
                acc.setdefault(c, []).append(correct / n)
        return {c: [float(a) for a in v] for c, v in acc.items()}
