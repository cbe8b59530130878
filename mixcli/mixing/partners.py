"""Mixing-partner selection for mixup, shared by every method plugin.

Vanilla mixup (Zhang et al., ICLR 2018) pairs each example with a partner drawn uniformly at random.
C-Mixup (Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022, arXiv:2210.05775)
instead draws, for each training example ``i``, its partner ``j`` from *all* ``N`` training examples
(``j = i`` included) with probability proportional to a kernel on the labels::

    P(j | i) = k(y_i, y_j) / sum_{m=1..N} k(y_i, y_m)

    gaussian:  k(y_i, y_j) = exp(-||y_i - y_j||^2 / (2 sigma^2))
    tophat:    k(y_i, y_j) = 1 if ||y_i - y_j|| < sigma else 0     (sklearn ``KernelDensity`` convention)

``||.||`` is the Euclidean norm over the whole (flattened) label vector, ``sigma`` is in raw label units.
With the tophat kernel the example itself (distance 0) is always in the support of its own row.

The gaussian rows are computed as ``softmax(-d^2 / (2 sigma^2))`` after subtracting the row minimum of
``d^2`` (the row maximum of the log-kernel), which is exact because the normaliser cancels, and which keeps
tiny ``sigma`` from underflowing a whole row to zero. Probability rows are only ever built ``block_size``
rows at a time, so memory is ``block_size x N`` float32, never ``N x N``.

Everything is vectorized torch and runs on the device of the labels; pass a ``torch.Generator`` on that
device for reproducible draws.

- :func:`kernel_weights` / :func:`partner_probs`: unnormalised / normalised rows ``(B, N)``.
- :func:`iter_partner_probs`: the probability rows of a batch of indices, block by block.
- :func:`sample_partners`: one C-Mixup partner per batch row.
- :class:`PartnerSampler`: ``"random"`` (vanilla mixup) or ``"cmixup"`` partners behind one callable.
- :func:`full_matrix`: the full ``N x N`` matrix, for tests and small data only.
- :func:`uniform_partners`: partners drawn uniformly from the whole training set with replacement (the
  C-Mixup reference's draw for its mixup and manifold-mixup baselines, ``partners: dataset``).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..api import PluginError

__all__ = [
    "KERNELS", "MODES", "kernel_weights", "partner_probs", "iter_partner_probs", "sample_partners",
    "full_matrix", "PartnerSampler", "PARTNERS", "check_partners", "uniform_partners",
]

KERNELS = ("gaussian", "tophat")
MODES = ("random", "cmixup")
PARTNERS = ("batch", "dataset")  # the ``partners`` option of mixup and manifold_mixup


# ----------------------------------------------------------------------------------------------- validation
def _check_sigma(sigma: float) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise PluginError(f"sigma (the label-kernel bandwidth) must be a number > 0, got {sigma!r}") from None
    if not (s > 0) or not math.isfinite(s):
        raise PluginError(f"sigma (the label-kernel bandwidth) must be a finite number > 0, got {sigma!r}")
    return s


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise PluginError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise PluginError(f"block_size must be an integer >= 1, got {block_size!r}")
    return block_size


def _as_2d(y: torch.Tensor) -> torch.Tensor:
    """Labels as float32 ``(N, D)``: ``(N,)`` becomes ``(N, 1)``, ``(N, ...)`` is flattened per row."""
    y = torch.as_tensor(y)
    if y.dim() == 0:
        raise PluginError("labels must have at least one dimension (one row per example)")
    y = y.reshape(y.shape[0], -1) if y.dim() != 1 else y.unsqueeze(1)
    return y.to(torch.float32)


# ----------------------------------------------------------------------------------------------- kernels
def _dists(y_rows: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances ``(B, N)`` (no ``|a|^2 + |b|^2 - 2ab`` cancellation)."""
    a, b = _as_2d(y_rows), _as_2d(y_all).to(y_rows.device)
    if a.shape[1] != b.shape[1]:
        raise PluginError(f"label dimension mismatch: rows have {a.shape[1]} values, y_all has {b.shape[1]}")
    return torch.cdist(a, b, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


def kernel_weights(y_rows: torch.Tensor, y_all: torch.Tensor, sigma: float, kernel: str) -> torch.Tensor:
    """Unnormalised kernel weights ``(B, N)`` float32 between ``y_rows`` (B, D) or (B,) and ``y_all`` (N, D) or (N,).

    The gaussian rows are scaled by a per-row constant (the row maximum of the log-kernel is subtracted
    before ``exp``), so each row's maximum is 1; this leaves :func:`partner_probs` unchanged and never
    underflows a whole row. Tophat weights are exactly 0 or 1.
    """
    sigma = _check_sigma(sigma)
    kernel = _check_kernel(kernel)
    d = _dists(y_rows, y_all)
    if kernel == "tophat":
        return (d < sigma).to(torch.float32)
    if d.shape[1] == 0:
        return d
    d2 = d.square_()  # in place: one (B, N) buffer throughout
    d2.sub_(d2.min(dim=1, keepdim=True).values)  # = log-kernel minus its row max, times -2 sigma^2
    return d2.mul_(-1.0 / (2.0 * sigma * sigma)).exp_()


def partner_probs(y_rows: torch.Tensor, y_all: torch.Tensor, sigma: float, kernel: str = "gaussian") -> torch.Tensor:
    """``P(j | i)`` for each row of ``y_rows`` over the ``N`` examples of ``y_all``: ``(B, N)``, rows sum to 1."""
    w = kernel_weights(y_rows, y_all, sigma, kernel)  # gaussian: each row's max is exactly 1 (a softmax)
    total = w.sum(dim=1, keepdim=True)
    if w.shape[1] > 0 and bool((total == 0).any()):
        raise PluginError(f"tophat kernel: some rows have no label within sigma={sigma} (give a larger sigma)")
    return w.div_(total)


def full_matrix(y_all: torch.Tensor, sigma: float, kernel: str = "gaussian") -> torch.Tensor:
    """The full ``(N, N)`` partner-probability matrix. ``N x N`` memory: for tests and small data only."""
    return partner_probs(y_all, y_all, sigma, kernel)


# ----------------------------------------------------------------------------------------------- sampling
def _index_on(index: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor:
    index = torch.as_tensor(index, device=y_all.device)
    if index.dim() != 1:
        raise PluginError(f"index must be a 1-D tensor of row indices, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise PluginError(f"index must be an integer tensor, got {index.dtype}")
    return index.long()


def iter_partner_probs(index: torch.Tensor, y_all: torch.Tensor, sigma: float, kernel: str = "gaussian",
                       block_size: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, probs)`` with ``probs = P(. | index[start:start+len(probs)])`` of shape (<= block_size, N)."""
    sigma = _check_sigma(sigma)
    kernel = _check_kernel(kernel)
    block_size = _check_block_size(block_size)
    index = _index_on(index, y_all)
    y2 = _as_2d(y_all)
    for start in range(0, index.shape[0], block_size):
        rows = y2[index[start:start + block_size]]
        yield start, partner_probs(rows, y2, sigma, kernel)


def sample_partners(index: torch.Tensor, y_all: torch.Tensor, sigma: float, kernel: str = "gaussian",
                    generator: torch.Generator | None = None, block_size: int = 1024) -> torch.Tensor:
    """One C-Mixup partner per entry of ``index`` (rows of ``y_all``), drawn from ``P(. | i)``: LongTensor (B,).

    Probability rows are built ``block_size`` at a time; ``generator`` (on ``y_all``'s device) makes the
    draws reproducible.
    """
    index = _index_on(index, y_all)
    out = torch.empty(index.shape[0], dtype=torch.long, device=y_all.device)
    if index.shape[0] == 0:
        return out
    n = y_all.shape[0]
    if n == 0:
        raise PluginError("cannot draw partners from an empty training set")
    if bool(((index < 0) | (index >= n)).any()):
        raise PluginError(f"index out of range for {n} training examples")
    sigma, kernel, block_size = _check_sigma(sigma), _check_kernel(kernel), _check_block_size(block_size)
    if kernel == "tophat":  # every row needs a label within sigma (partner_probs checks and says so)
        for _ in iter_partner_probs(index, y_all, sigma, kernel, block_size):
            pass
    u = torch.rand(index.shape[0], generator=generator, device=y_all.device, dtype=torch.float64)
    return draw_partners(index, y_all, sigma, kernel, u, block_size)


def draw_partners(index: torch.Tensor, y_all: torch.Tensor, sigma: float, kernel: str, u: torch.Tensor,
                  block_size: int = 1024) -> torch.Tensor:
    """The partner of each row of ``index`` by inverse-CDF sampling with the given uniforms ``u`` in [0, 1):
    the first ``j`` whose cumulative kernel weight exceeds ``u * total`` (zero-weight ``j`` never drawn).

    No validation and no host-device synchronization: the hot-path form of :func:`sample_partners` for
    methods that draw ``u`` from their own seeded generator. Rows are built ``block_size`` at a time.
    """
    y2 = _as_2d(y_all)
    u = torch.as_tensor(u, dtype=torch.float64).to(y2.device, non_blocking=True)
    out = torch.empty(index.shape[0], dtype=torch.long, device=y2.device)
    for start in range(0, index.shape[0], block_size):
        rows = index[start:start + block_size]
        cdf = kernel_weights(y2[rows], y2, sigma, kernel).double().cumsum_(1)
        target = (u[start:start + len(rows)] * cdf[:, -1]).unsqueeze(1)
        draw = torch.searchsorted(cdf, target, right=True).squeeze(1)
        out[start:start + len(rows)] = draw.clamp_(max=cdf.shape[1] - 1)
    return out


class PartnerSampler:
    """Draws a mixing partner for each batch row: ``"random"`` (uniform, vanilla mixup) or ``"cmixup"``.

    ``sampler(index, generator)`` takes the training-set indices of the batch rows and returns the
    training-set indices of their partners (LongTensor, same shape, on ``y_all``'s device).
    """

    def __init__(self, y_all: torch.Tensor, mode: str = "random", sigma: float = 1.0, kernel: str = "gaussian",
                 block_size: int = 1024):
        if mode not in MODES:
            raise PluginError(f"mode (partner selection) must be one of {', '.join(MODES)}, got {mode!r}")
        self.sigma = _check_sigma(sigma)
        self.kernel = _check_kernel(kernel)
        self.block_size = _check_block_size(block_size)
        self.mode = mode
        y_all = torch.as_tensor(y_all)
        if y_all.dim() == 0 or y_all.shape[0] == 0:
            raise PluginError("partner sampling needs a non-empty training set (y_all with one row per example)")
        if mode == "cmixup":
            if not bool(torch.isfinite(_as_2d(y_all)).all()):
                raise PluginError("cmixup partner selection needs finite labels (y_all has NaN or inf)")
        self.y_all = y_all

    @property
    def n(self) -> int:
        return int(self.y_all.shape[0])

    def __call__(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mode == "random":
            index = _index_on(index, self.y_all)
            return torch.randint(0, self.n, index.shape, generator=generator, device=self.y_all.device)
        return sample_partners(index, self.y_all, self.sigma, self.kernel, generator=generator,
                               block_size=self.block_size)

    def __repr__(self) -> str:
        if self.mode == "random":
            return f"PartnerSampler(mode='random', n={self.n})"
        return (f"PartnerSampler(mode='cmixup', n={self.n}, sigma={self.sigma}, kernel={self.kernel!r}, "
                f"block_size={self.block_size})")


# ------------------------------------------------------------------------- uniform partners (C-Mixup baselines)
def check_partners(partners: str) -> str:
    if partners not in PARTNERS:
        raise PluginError(f"partners must be one of {', '.join(PARTNERS)} (batch: a random permutation of the "
                          f"batch; dataset: uniform over the training set), got {partners!r}")
    return partners


def uniform_partners(rng: np.random.Generator, rows: int, n: int, device) -> torch.Tensor:
    """``rows`` training-set indices drawn uniformly from ``0..n-1`` with replacement, on ``device``.

    The C-Mixup reference (``src/algorithm.py``, ``mixtype random``) draws every batch row's partner with
    ``np.random.choice(N)`` over the whole training set (the row itself included); this is that draw, from
    the method's seeded host generator, so it never waits on the device. Fetch the inputs with ``ctx.fetch``.
    """
    from ..api import to_device

    return to_device(rng.integers(0, n, rows), device)
