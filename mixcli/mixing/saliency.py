"""Saliency maps and the pieces of the saliency-guided methods (comixup, guidedmixup) share.

- :func:`gradient_saliency`: ``sqrt(mean_c (d CE / d x)^2)``, the input-gradient saliency of PuzzleMix,
  Co-Mixup and GuidedMixup, from an extra forward/backward (optionally keeping the clean loss's graph, for
  the references' "clean input regularisation");
- :func:`gaussian_blur`: torchvision's ``gaussian_blur`` (reflect padding), batched over maps;
- :func:`spectral_residual`: GuidedMixup's spectral-residual saliency (Hou & Zhang, CVPR 2007, as in the
  GuidedMixup reference's ``SpectralResidual``);
- :func:`greedy_cycle_pairing`: GuidedMixup's greedy pairing, one cycle through the batch that takes the
  farthest unvisited partner at each step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gradient_saliency", "gaussian_kernel1d", "gaussian_blur", "to_gray", "spectral_residual",
           "greedy_cycle_pairing"]


def gradient_saliency(model, x: torch.Tensor, y: torch.Tensor, train: bool = False, keep_graph: bool = False):
    """``(s, ce)``: the saliency ``s = sqrt(mean_c (d CE / d x)^2)`` (B, H, W) float32, where CE is the
    batch-mean cross-entropy of ``model(x)``, and ``ce`` (that scalar, still attached to the parameters'
    graph, when ``keep_graph``; else None).

    ``train``: the forward runs with the model in its current (training) mode, as the Co-Mixup reference does
    when it keeps the clean loss (``clean_lam > 0``) and the GuidedMixup reference always does (BatchNorm
    normalises by the batch and updates its running statistics); else in eval mode (PuzzleMix's and
    Co-Mixup's ``clean_lam: 0``). Each module's mode is restored. Only the input gradient is taken here;
    with ``keep_graph`` the caller adds a multiple of ``ce`` to its loss, so that the parameters get the
    clean loss's gradient in the same backward (the references' ``loss_batch.backward(retain_graph=True)``).
    A positive scale of the loss (the references' ``2 clean_lam / K``) scales ``s`` only, which every method
    normalises away."""
    modes = [(m, m.training) for m in model.modules()]
    if not train:
        model.eval()
    try:
        with torch.enable_grad():
            xv = x.detach().requires_grad_(True)
            ce = F.cross_entropy(model(xv).float(), y)
            (g,) = torch.autograd.grad(ce, xv, retain_graph=keep_graph)
    finally:
        for m, t in modes:
            m.training = t
    return g.float().pow(2).mean(1).sqrt(), (ce if keep_graph else None)


def gaussian_kernel1d(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised Gaussian window of torchvision: ``exp(-t^2 / (2 sigma^2))`` at ``t = -(k-1)/2 .. (k-1)/2``."""
    half = (size - 1) * 0.5
    t = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(s: torch.Tensor, size: int = 7, sigma: float = 3.0) -> torch.Tensor:
    """Blur maps ``s`` (..., H, W) with a ``size`` x ``size`` Gaussian of std ``sigma``, reflect padding of
    ``size // 2``: torchvision's ``TF.gaussian_blur(s, (size, size), (sigma, sigma))`` (which the GuidedMixup
    reference calls), each map on its own. Needs H, W > size // 2 (reflect padding)."""
    shape = s.shape
    x = s.reshape(-1, 1, *shape[-2:])
    dt = x.dtype if x.dtype.is_floating_point else torch.float32
    k1 = gaussian_kernel1d(size, sigma, dt, x.device)
    k2 = torch.mm(k1[:, None], k1[None, :])[None, None]
    p = size // 2
    out = F.conv2d(F.pad(x.to(dt), [p, p, p, p], mode="reflect"), k2)
    return out.reshape(shape)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): torchvision's ``rgb_to_grayscale`` (``0.2989 R + 0.587 G + 0.114 B``) for 3 channels, the
    image itself for 1 (the reference's ``transforms.Grayscale``)."""
    if x.shape[1] == 3:
        r, g, b = x.unbind(1)
        return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
    if x.shape[1] == 1:
        return x.clone()
    raise ValueError(f"spectral residual saliency needs 1- or 3-channel images, got {x.shape[1]} channels")


def spectral_residual(x: torch.Tensor, blur: int = 7, sigma: float = 3.0, eps: float = 1e-10,
                      max_side: int = 128) -> torch.Tensor:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) of images ``x`` (B, C, H, W), (B, H, W) float32,
    as GuidedMixup's ``SpectralResidual.transform_spectral_residual``:

        g = gray(x)  (resized to max_side^2 when H > max_side),  F = FFT2(g),  A = sqrt(|F|^2 + eps)
        R = exp(log A - box3(log A))   (3 x 3 mean filter, replicate padding)
        S = blur(|IFFT2(F R / A)|)     (Gaussian, ``blur`` x ``blur``, std ``sigma``; 0: none)

    resized back to H x W when it was shrunk. No gradient."""
    with torch.no_grad():
        h, w = x.shape[-2:]
        g = to_gray(x.float())
        if h > max_side:
            g = F.interpolate(g, size=(max_side, max_side), mode="bilinear", align_corners=False, antialias=True)
        freq = torch.fft.fft2(g)
        mag = (freq.real ** 2 + freq.imag ** 2 + eps).sqrt()
        logmag = mag.log()
        box = F.conv2d(F.pad(logmag, [1, 1, 1, 1], mode="replicate"),
                       torch.full((1, 1, 3, 3), 1.0 / 9, device=x.device))
        residual = (logmag - box).exp()
        scaled = torch.complex(freq.real * residual / mag, freq.imag * residual / mag)
        sal = torch.fft.ifft2(scaled)
        sal = (sal.real ** 2 + sal.imag ** 2).sqrt()
        if blur > 0:
            sal = gaussian_blur(sal, blur, sigma)
        if h > max_side:
            sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return sal.squeeze(1)


def greedy_cycle_pairing(dist: np.ndarray) -> np.ndarray:
    """GuidedMixup's greedy pairing (the reference's ``onecycle_cover``): ``partner`` (n,) with
    ``partner[i]`` the row mixed with row ``i``, all rows on one cycle.

    Start at the farthest pair ``(r, c) = argmax_{i != j} dist[i, j]`` (``partner[r] = c``); from the current
    row, go to the farthest row not yet visited; the last row closes the cycle back to ``r``. Ties go to the
    first index (numpy's argmax, row-major). ``dist`` is not modified."""
    d = np.array(dist, dtype=np.float32, copy=True)
    n = d.shape[0]
    partner = np.zeros(n, dtype=np.int64)
    np.fill_diagonal(d, -np.inf)
    row, col = divmod(int(np.argmax(d)), n)
    first = row
    partner[row] = col
    d[:, row] = -np.inf
    for _ in range(n - 2):
        row = col
        col = int(np.argmax(d[row]))
        partner[row] = col
        d[:, row] = -np.inf
    partner[col] = first
    return partner
