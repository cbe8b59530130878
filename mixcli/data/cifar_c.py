"""The CIFAR-10-C corruptions that need more than a filter: glass, motion and zoom blur, snow, frost, fog,
spatter, elastic transform, and JPEG through PIL's encoder.

Ports of the reference generator (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019; ``hendrycks/robustness`` ``ImageNet-C/create_c/make_cifar_c.py``)
with its CIFAR parameters (:data:`PARAMS`), batched in torch on the device (images ``x`` in [0, 1], shape
(B, C, H, W); random draws from the caller's generator). The reference works on one 32x32 RGB image at a
time with numpy, scipy, scikit-image, OpenCV and ImageMagick; each function below says what it computes and
where it departs. Sizes other than 32x32 use the same formulas with the image's own size where the
reference writes 32; grey images (C = 1) use the luminance ``0.299 R + 0.587 G + 0.114 B`` of the
reference's colours (frost, spatter) and the image itself as the grey of snow.

- ``glass_blur`` (sigma, delta, iterations): ``g = uint8(255 gaussian(x, sigma))``, then for each iteration,
  for rows ``h = H - delta .. delta + 1`` and columns ``w = W - delta .. delta + 1`` (descending), with
  ``dx, dy ~ randint(-delta, delta)`` (the upper end excluded, as numpy's ``randint``), pixel (h, w) takes
  the current value of (h + dy, w + dx); the result blurred again by ``gaussian(., sigma)``. The reference
  writes this as a swap, ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``, but on an RGB array both sides are
  views, so the second assignment writes back the copied value: it is a copy, and so is this port.
- ``motion_blur`` (radius, sigma), angle ``~ U(-45, 45)`` degrees: ImageMagick's ``MotionBlurImage``: a
  one-sided kernel of ``n = 2 ceil(radius) + 1`` taps ``k_i ~ exp(-i^2 / (2 sigma^2))`` (normalized),
  tap ``i`` at the offset ``(ceil(i sin(a) - 0.5), ceil(i cos(a) - 0.5))`` (rows, columns), pixels beyond the
  border repeated (ImageMagick's edge virtual pixels); the result rounded to ImageMagick's 16-bit quantum
  and truncated to the 8-bit PNG, ``floor(round(65535 v) / 257)``. Equal, pixel for pixel, to ImageMagick
  6.9.11 Q16's ``convert in.png -motion-blur RxS+A out.png`` (checked on random images and angles).
- ``zoom_blur`` (the zoom factors ``numpy.arange(1, z_max, 0.01)``): ``(x + sum_z zoom(x, z)) / (n + 1)``
  with the reference's ``clipped_zoom``: the central ``ceil(H / z)`` crop (offset ``(H - ch) // 2``) zoomed
  by ``scipy.ndimage.zoom(order=1)`` (linear, output size ``round(ch z)``, the output's corner samples on
  the input's corners) and its centre cut back to H (offset ``(out - H) // 2``), as resampling matrices.
- ``snow`` (mean, std, zoom, threshold, radius, sigma, blend): a layer ``N(mean, std)`` (H, W), clipped-zoomed,
  values below the threshold set to 0, truncated to 8 bits, motion-blurred as above with the angle
  ``~ U(-135, -45)``; ``x' = blend x + (1 - blend) max(x, 1.5 grey(x) + 0.5)`` and the output
  ``clip(x' + s + rot180(s))``.
- ``frost`` (a, b): ``clip(a x + b F)`` in 0..255 units, ``F`` a random 32x32 (H x W) crop of one of the
  reference's first five frost pictures (it draws ``randint(5)``, so ``frost6.jpg`` is never used) read with
  OpenCV and shrunk by ``cv2.resize(fx=0.2, fy=0.2)`` (bilinear). The pictures are not part of mixcli:
  ``frost1.png`` ... ``frost5.jpg`` of ``hendrycks/robustness`` ``ImageNet-C/create_c/`` go in a folder
  (the evaluator's ``frost_dir``; ``download: true`` fetches them from GitHub and checks their git hashes).
- ``fog`` (a, decay): ``x + a P`` rescaled by ``max(x) / (max(x) + a)``, ``P`` the reference's diamond-square
  ``plasma_fractal`` (mapsize the smallest power of two >= max(H, W), 32 for CIFAR; wibble 100 divided by
  ``decay`` each level; normalized to [0, 1]) cut to H x W.
- ``spatter`` (mean, std, sigma, threshold, intensity, mud): a layer ``L = gaussian(N(mean, std), sigma)``
  with values below the threshold set to 0. Water (``mud = 0``, severities 1-3): the reference's OpenCV
  chain on ``uint8(255 L)`` (Canny 50/150, L2 distance transform, truncation at 20, 3x3 box blur,
  histogram equalization, the 3x3 emboss kernel, 3x3 box blur), ``m = L_uint8 * dist / max * intensity``
  and ``clip(x + m (175, 238, 238) / 255)``; this part runs with OpenCV on the CPU, per image, as the
  reference. Mud (severities 4-5): ``m = gaussian(1[L > threshold], intensity)``, ``m < 0.8`` set to 0,
  ``x (1 - m) + m (63, 42, 20) / 255``.
- ``elastic_transform`` (alpha, sigma, jitter), scaled by the image size as the reference's ``IMSIZE`` = 32:
  the affine map that moves three points around the centre by ``U(-jitter, jitter)`` (``cv2.
  getAffineTransform``), applied as ``cv2.warpAffine`` (bilinear, reflect-101 borders; OpenCV rounds its
  coordinates to 1/32 pixel, this port does not), then the displacement ``alpha gaussian(U(-1, 1), sigma,
  reflect, truncate 3)`` per axis, sampled with ``scipy.ndimage.map_coordinates(order=1, mode='reflect')``.
- ``jpeg_compression`` (quality): PIL's JPEG encoder and decoder (``Image.save(format='JPEG',
  quality=q)``, the reference's call; PIL's defaults: 4:2:0 chroma subsampling for RGB), one image at a
  time on the CPU.

Gaussian filters are scikit-image's ``gaussian`` (scipy's ``gaussian_filter``: radius ``int(truncate sigma +
0.5)``, default mode ``nearest``, truncate 4).
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..api import PluginError

PARAMS: dict[str, list] = {
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],  # numpy.arange(1, z, 0.01)
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)],  # times the image side (the reference's IMSIZE * c)
    "jpeg_compression": [80, 65, 58, 50, 40],
}
_LUMA = (0.299, 0.587, 0.114)

#: the reference's frost pictures (``hendrycks/robustness``, ``ImageNet-C/create_c/``) and their git blob ids
FROST_FILES = {"frost1.png": "c7b78a17938df51894497b4782decbd82532dd5f",
               "frost2.png": "48f7a861ffa41b6d7496b701fef96d5edf739282",
               "frost3.png": "d47f9d25f41251ee9a66b294c0bbfad6053017c9",
               "frost4.jpg": "f8b0c413176d70150b593e029d84b4a88c21dd4b",
               "frost5.jpg": "95dc9056926d8201df760535f9bb9112f012e862"}
FROST_URL = ("https://raw.githubusercontent.com/hendrycks/robustness/8190fe329f5f072a06e3a2aea02bb5dda69aed9f/"
             "ImageNet-C/create_c/")


# --------------------------------------------------------------------------------------------- helpers
def pad_index(n: int, r: int, mode: str, device=None) -> torch.Tensor:
    """Indices ``-r .. n + r - 1`` mapped into ``0 .. n - 1``: ``nearest`` (repeat the edge), ``symmetric``
    (scipy's ``reflect``: d c b a | a b c d | d c b a) or ``reflect101`` (OpenCV's default, scipy's
    ``mirror``: d c b | a b c d | c b a)."""
    i = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if n == 1:
        return torch.zeros_like(i)
    if mode == "symmetric":
        period = 2 * n
        i = i % period
        return torch.where(i < n, i, period - 1 - i)
    period = 2 * n - 2  # reflect101
    i = i % period
    return torch.where(i < n, i, period - i)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """scipy's ``gaussian_filter`` over the last two axes of ``x`` (any leading shape), ``mode`` as
    :func:`pad_index` (``nearest``: scikit-image's default; ``symmetric``: scipy's ``reflect``)."""
    if sigma <= 1e-15:
        return x
    k = gaussian_kernel1d(sigma, truncate).to(x.device, x.dtype)
    r = k.numel() // 2
    shape = x.shape
    h, w = shape[-2:]
    y = x.reshape(-1, 1, h, w)
    y = y.index_select(3, pad_index(w, r, mode, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = y.index_select(2, pad_index(h, r, mode, x.device))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(shape)


def truncate8(x: torch.Tensor) -> torch.Tensor:
    """``np.uint8(255 x) / 255`` for x in [0, 1] (truncation, with a guard against float error)."""
    return torch.floor(x.clamp(0, 1) * 255.0 + 1e-4) / 255.0


def _grey(x: torch.Tensor) -> torch.Tensor:
    """cv2's RGB2GRAY (B, 1, H, W); a one-channel image is its own grey."""
    if x.shape[1] == 1:
        return x
    return _LUMA[0] * x[:, :1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


def _colour(rgb255, channels: int, like: torch.Tensor) -> torch.Tensor:
    c = torch.tensor(rgb255, dtype=like.dtype, device=like.device) / 255.0
    if channels == 1:
        c = (c * torch.tensor(_LUMA, dtype=like.dtype, device=like.device)).sum().view(1)
    return c.view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------- glass
def glass_blur(x: torch.Tensor, sigma: float, delta: int, iterations: int, gen=None) -> torch.Tensor:
    b, c, h, w = x.shape
    g = truncate8(gaussian(x, sigma))
    src = torch.arange(h * w, device=x.device).repeat(b, 1)  # which original pixel each pixel now holds
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    positions = [(r, q) for r in rows for q in cols]
    ar = torch.arange(b, device=x.device)
    for _ in range(iterations):
        d = torch.randint(-delta, delta, (len(positions), 2, b), device=x.device, generator=gen)
        for k, (r, q) in enumerate(positions):
            dx, dy = d[k, 0], d[k, 1]
            src[:, r * w + q] = src[ar, (r + dy) * w + (q + dx)]
    moved = g.reshape(b, c, h * w).gather(2, src[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)
    return gaussian(moved, sigma)


# --------------------------------------------------------------------------------------------- motion
def motion_taps(radius: float, sigma: float, angle: torch.Tensor):
    """ImageMagick's MotionBlurImage kernel: weights (n,) and per-image (rows, columns) offsets (n, B)."""
    n = int(2 * math.ceil(radius) + 1)
    i = torch.arange(n, dtype=torch.float64)
    k = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    a = torch.deg2rad(angle.double().cpu())
    dr = torch.ceil(i[:, None] * torch.sin(a)[None] - 0.5).long()
    dc = torch.ceil(i[:, None] * torch.cos(a)[None] - 0.5).long()
    return k, dr, dc


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """``angle`` (B,) in degrees; output rounded to 8 bits (the PNG the reference decodes)."""
    b, c, h, w = x.shape
    k, dr, dc = motion_taps(radius, sigma, angle)
    dev = x.device
    rr = torch.arange(h, device=dev).view(1, h, 1)
    cc = torch.arange(w, device=dev).view(1, 1, w)
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    xs = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    out = torch.zeros_like(xs, dtype=torch.float64)
    for t in range(len(k)):
        r = (rr + dr[t].to(dev).view(b, 1, 1)).clamp(0, h - 1)
        q = (cc + dc[t].to(dev).view(b, 1, 1)).clamp(0, w - 1)
        out += float(k[t]) * xs[bi, r, q].double()
    q16 = torch.round(out.clamp(0, 1) * 65535.0)  # ImageMagick's 16-bit quantum, then the 8-bit PNG
    return (torch.floor(q16 / 257.0) / 255.0).to(x.dtype).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- zoom
@functools.lru_cache(maxsize=256)
def clipped_zoom_matrix(n: int, z: float) -> torch.Tensor:
    """(n, n) linear map of one axis of the reference's ``clipped_zoom``: crop ``ceil(n / z)`` around the
    centre, ``scipy.ndimage.zoom(order=1)`` to ``round(ch z)`` samples, cut the centre ``n``."""
    ch = int(math.ceil(n / z))
    top = (n - ch) // 2
    out = int(round(ch * z))
    trim = (out - n) // 2
    m = torch.zeros(n, n, dtype=torch.float64)
    for j in range(n):
        o = trim + j
        p = o * (ch - 1) / (out - 1) if out > 1 else 0.0
        i0 = min(int(math.floor(p)), ch - 1)
        t = p - i0
        m[j, top + i0] += 1 - t
        if t > 0:
            m[j, top + min(i0 + 1, ch - 1)] += t
    return m


def clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """The reference's ``clipped_zoom`` over the last two axes."""
    h, w = x.shape[-2:]
    mh = clipped_zoom_matrix(h, float(z)).to(x.device, x.dtype)
    mw = clipped_zoom_matrix(w, float(z)).to(x.device, x.dtype)
    return torch.einsum("ij,...jk,lk->...il", mh, x, mw)


def zoom_factors(z_max: float) -> np.ndarray:
    return np.arange(1, z_max, 0.01)


def zoom_blur(x: torch.Tensor, z_max: float) -> torch.Tensor:
    zs = zoom_factors(z_max)
    out = torch.zeros_like(x)
    for z in zs:
        out += clipped_zoom(x, float(z))
    return (x + out) / (len(zs) + 1)


# ----------------------------------------------------------------------------------------------- snow
def snow(x: torch.Tensor, p, gen=None) -> torch.Tensor:
    mean, std, z, thr, radius, sigma, blend = p
    b, c, h, w = x.shape
    layer = mean + std * torch.randn((b, 1, h, w), device=x.device, generator=gen, dtype=x.dtype)
    layer = clipped_zoom(layer, z)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = truncate8(layer)
    angle = torch.rand(b, device=x.device, generator=gen) * 90 - 135
    layer = motion_blur(layer, radius, sigma, angle)
    grey = _grey(x)
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + layer + torch.rot90(layer, 2, dims=(2, 3))).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ fog
def plasma_fractal(b: int, mapsize: int, decay: float, gen=None, device=None) -> torch.Tensor:
    """The reference's diamond-square height map, (b, mapsize, mapsize), normalized to [0, 1] per map."""
    assert mapsize & (mapsize - 1) == 0
    m = torch.zeros(b, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(a):
        u = torch.rand(a.shape, dtype=torch.float64, device=device, generator=gen) * 2 * wibble - wibble
        return a / 4 + wibble * u

    while step >= 2:
        half = step // 2
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        square = corner + torch.roll(corner, -1, 1)
        square = square + torch.roll(square, -1, 2)
        m[:, half:mapsize:step, half:mapsize:step] = wibbled(square)
        dr = m[:, half:mapsize:step, half:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2)
        m[:, 0:mapsize:step, half:mapsize:step] = wibbled(lt)
        tt = dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1)
        m[:, half:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(x: torch.Tensor, a: float, decay: float, gen=None) -> torch.Tensor:
    b, c, h, w = x.shape
    size = 1 << max(1, (max(h, w) - 1).bit_length())
    frac = plasma_fractal(b, size, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    top = x.amax((1, 2, 3), keepdim=True)
    return ((x + a * frac) * top / (top + a)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- frost
def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def frost_pictures(folder: str, download: bool = False) -> list[np.ndarray]:
    """The reference's five frost pictures, read (BGR -> RGB) and shrunk as it does, float64 0..255."""
    import cv2

    missing = [f for f in FROST_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        import urllib.request

        os.makedirs(folder, exist_ok=True)
        for f in missing:
            try:
                data = urllib.request.urlopen(FROST_URL + f, timeout=60).read()
            except OSError as exc:
                raise PluginError(f"corruptions: could not download {FROST_URL + f}: {exc}") from None
            if _git_blob_sha1(data) != FROST_FILES[f]:
                raise PluginError(f"corruptions: {f} downloaded from {FROST_URL} has the wrong content")
            with open(os.path.join(folder, f), "wb") as fh:
                fh.write(data)
        missing = []
    if missing:
        raise PluginError(f"corruptions: frost needs the reference's frost pictures in frost_dir {folder} "
                          f"(missing {', '.join(missing)}): copy frost1.png .. frost5.jpg from "
                          "github.com/hendrycks/robustness ImageNet-C/create_c/, or set download: true")
    out = []
    for f in FROST_FILES:
        img = cv2.imread(os.path.join(folder, f))
        if img is None:
            raise PluginError(f"corruptions: {os.path.join(folder, f)} is not a readable image")
        img = cv2.resize(img, (0, 0), fx=0.2, fy=0.2)
        out.append(img[..., ::-1].astype(np.float64))
    return out


def frost(x: torch.Tensor, a: float, bw: float, pictures: list[np.ndarray], gen=None) -> torch.Tensor:
    b, c, h, w = x.shape
    pics = [torch.from_numpy(np.ascontiguousarray(p)).to(x.device, x.dtype) for p in pictures]
    if any(p.shape[0] <= h or p.shape[1] <= w for p in pics):
        raise PluginError(f"corruptions: the frost pictures are too small for {h}x{w} images")
    idx = torch.randint(0, len(pics), (b,), generator=gen, device=x.device).tolist()
    u = torch.rand((b, 2), generator=gen, device=x.device, dtype=torch.float64).cpu()
    crops = []
    for i, k in enumerate(idx):
        p = pics[k]
        r0 = int(u[i, 0] * (p.shape[0] - h))
        c0 = int(u[i, 1] * (p.shape[1] - w))
        crops.append(p[r0:r0 + h, c0:c0 + w].permute(2, 0, 1))
    fr = torch.stack(crops)
    if c == 1:
        fr = (fr * torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return ((a * x * 255.0 + bw * fr).clamp(0, 255) / 255.0)


# -------------------------------------------------------------------------------------------- spatter
def _water_distance(layer8: np.ndarray) -> np.ndarray:
    """The reference's OpenCV chain on one uint8 liquid layer (H, W) -> float32 'dist'."""
    import cv2

    dist = 255 - cv2.Canny(layer8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.filter2D(dist, cv2.CV_8U, ker)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def spatter(x: torch.Tensor, p, gen=None) -> torch.Tensor:
    mean, std, sigma, thr, intensity, mud = p
    b, c, h, w = x.shape
    layer = mean + std * torch.randn((b, h, w), device=x.device, generator=gen, dtype=torch.float64)
    layer = gaussian(layer, sigma)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    if mud == 0:
        l8 = (layer * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()  # astype(uint8) of values < 2.56
        m = np.stack([l8[i].astype(np.float32) * _water_distance(l8[i]) for i in range(b)])
        top = m.reshape(b, -1).max(1).reshape(b, 1, 1)
        m = np.divide(m, top, out=np.zeros_like(m), where=top > 0) * np.float32(intensity)
        m = torch.from_numpy(m).to(x.device, x.dtype)[:, None]
        return (x + m * _colour((175, 238, 238), c, x)).clamp(0, 1)
    m = gaussian((layer > thr).to(x.dtype), intensity)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)[:, None]
    return (x * (1 - m) + m * _colour((63, 42, 20), c, x)).clamp(0, 1)


# -------------------------------------------------------------------------------------------- elastic
def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``cv2.getAffineTransform``: the 2x3 M with ``M [src_i, 1] = dst_i`` for three points."""
    a = np.concatenate([src, np.ones((3, 1))], 1)
    return np.linalg.solve(a, dst).T


def _bilinear(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``img`` (B, C, H, W) at real coordinates (B, H', W'), linear interpolation between the two
    neighbours on each axis, indices beyond the border mapped by :func:`pad_index`'s ``mode``."""
    b, c, h, w = img.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    tr, tc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()
    pad = 2 + int(max(rows.abs().max().item(), cols.abs().max().item(), h, w))
    ri, ci = pad_index(h, pad, mode, img.device), pad_index(w, pad, mode, img.device)
    flat = img.reshape(b, c, h * w)

    def at(r, q):
        idx = ri[r + pad] * w + ci[q + pad]  # (B, H', W')
        return flat.gather(2, idx.reshape(b, 1, -1).expand(b, c, -1)).reshape(b, c, *r.shape[1:])

    top = at(r0, c0) * (1 - tc) + at(r0, c0 + 1) * tc
    bot = at(r0 + 1, c0) * (1 - tc) + at(r0 + 1, c0 + 1) * tc
    return top * (1 - tr) + bot * tr


def elastic_transform(x: torch.Tensor, p, gen=None) -> torch.Tensor:
    b, c, h, w = x.shape
    size = min(h, w)  # the reference's IMSIZE (32 for CIFAR)
    alpha, sigma, jitter = (v * size for v in p)
    dev = x.device
    centre = np.array([h // 2, w // 2], dtype=np.float32)  # float32(shape_size) // 2, as the reference
    sq = size // 3
    pts1 = np.float32([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    shifts = (torch.rand((b, 3, 2), generator=gen, device=dev, dtype=torch.float64) * 2 - 1) * jitter
    shifts = shifts.cpu().numpy().astype(np.float32)
    inv = []
    for i in range(b):  # warpAffine samples the source at M^-1 (x, y)
        m = affine_from_points(pts1.astype(np.float64), (pts1 + shifts[i]).astype(np.float64))
        full = np.vstack([m, [0, 0, 1]])
        inv.append(np.linalg.inv(full)[:2])
    inv = torch.from_numpy(np.stack(inv)).to(dev, torch.float64)  # (B, 2, 3) on (x=col, y=row)
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64),
                            torch.arange(w, device=dev, dtype=torch.float64), indexing="ij")
    sx = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    img = _bilinear(x.double(), sy, sx, "reflect101").float().double()  # the reference's float32 image
    noise = torch.rand((b, 2, h, w), generator=gen, device=dev, dtype=torch.float64) * 2 - 1
    disp = (gaussian(noise, sigma, mode="symmetric", truncate=3) * alpha).float().double()
    out = _bilinear(img, yy + disp[:, 1], xx + disp[:, 0], "symmetric")
    return out.clamp(0, 1).to(x.dtype)


# ----------------------------------------------------------------------------------------------- jpeg
def jpeg_pil(x: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL's JPEG round trip of uint8-truncated images (RGB, or L for one channel), one at a time."""
    from PIL import Image

    arr = (x.clamp(0, 1) * 255.0 + 1e-4).floor().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(quality))
        buf.seek(0)
        back = np.asarray(Image.open(buf).convert(img.mode))
        out.append(back[..., None] if back.ndim == 2 else back)
    return torch.from_numpy(np.stack(out)).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255.0


def corrupt(x: torch.Tensor, name: str, param, gen=None, frost_images=None) -> torch.Tensor:
    """One of this module's corruptions (``PARAMS[name][severity - 1]`` as ``param``), not quantized."""
    if name == "glass_blur":
        return glass_blur(x, *param, gen=gen)
    if name == "motion_blur":
        angle = torch.rand(x.shape[0], device=x.device, generator=gen) * 90 - 45
        return motion_blur(x, param[0], param[1], angle)
    if name == "zoom_blur":
        return zoom_blur(x, param)
    if name == "snow":
        return snow(x, param, gen)
    if name == "frost":
        return frost(x, param[0], param[1], frost_images, gen)
    if name == "fog":
        return fog(x, *param, gen=gen)
    if name == "spatter":
        return spatter(x, param, gen)
    if name == "elastic_transform":
        return elastic_transform(x, param, gen)
    if name == "jpeg_compression":
        return jpeg_pil(x, param)
    raise ValueError(f"unknown corruption {name!r}")
