"""AlignMixup (Venkataramanan, Kijak, Amsaleg, Avrithis, CVPR 2022): mix optimally aligned feature maps."""
from __future__ import annotations

import math
import warnings

import torch

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate, lam_tensor,
                        permutation)
from mixcli.mixing.inputs import param_dtype


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp`` with the shifted exponents clamped at -80: terms below e^-80 of the largest are
    invisible in a float32 sum, and the clamp keeps the CPU off denormal arithmetic (10x slower exp)."""
    m = x.amax(dim, keepdim=True)
    return (x - m).clamp_min(-80.0).exp().sum(dim).log() + m.squeeze(dim)


def _iterations(k: torch.Tensor, f: torch.Tensor, g: torch.Tensor, stopped: torch.Tensor, log_mu: float,
                log_nu: float, n: int, eps: float, tol: float):
    """``n`` Sinkhorn iterations in units of eps (f = u / eps, g = v / eps, k = -C / eps). Once the stopping
    test has held (``stopped``, a 0-d bool tensor) the iterates stay frozen: the early stop is decided on the
    device, so no iteration waits on the host."""
    for _ in range(n):
        f_new = log_mu - _logsumexp(k + g[:, None, :], 2)
        g_new = log_nu - _logsumexp(k + f_new[:, :, None], 1)
        err = eps * (f_new - f).abs().sum(-1).mean()  # mean_batch sum_i |u_i - u_i^prev|
        f = torch.where(stopped, f, f_new)
        g = torch.where(stopped, g, g_new)
        stopped = stopped | (err < tol)
    return f, g, stopped


_COMPILED = []


def _compiled_iterations():
    if not _COMPILED:
        _COMPILED.append(torch.compile(_iterations, dynamic=False))
    return _COMPILED[0]


def sinkhorn(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 0.1,
             check_every: int = 10, compiled: bool = False) -> torch.Tensor:
    """Entropic OT plans with uniform marginals 1/r, for a batch of (r, r) cost matrices (B, r, r).

    Log-domain Sinkhorn exactly as the reference ``utils/OT.py`` (adapted there from SinkhornAutoDiff):
    ``u, v = 0``; repeat ``u = eps (log(1/r + 1e-8) - LSE_j((v_j - C_ij) / eps))``, then the same for ``v``
    with the new ``u``, and stop after the first iteration whose change ``mean_batch sum_i |u_i - u_i^prev|``
    is below ``tol`` (at most ``max_iter``). Returns ``P_ij = exp((u_i + v_j - C_ij) / eps)``.

    The stop is applied on the device (iterates frozen once the test holds), so the result equals the
    reference's early exit without a host synchronization; the iterations run in chunks of ``check_every``
    (``compiled``: a ``torch.compile``-d chunk).
    """
    cost = cost.float()
    b, r, r2 = cost.shape
    k = cost / -eps
    log_mu, log_nu = math.log(1.0 / r + 1e-8), math.log(1.0 / r2 + 1e-8)
    f, g = cost.new_zeros(b, r), cost.new_zeros(b, r2)
    stopped = torch.zeros((), dtype=torch.bool, device=cost.device)
    run = _compiled_iterations() if compiled else _iterations
    for done in range(0, max_iter, check_every):
        f, g, stopped = run(k, f, g, stopped, log_mu, log_nu, min(check_every, max_iter - done), eps, tol)
    return torch.exp(k + f[:, :, None] + g[:, None, :])


def sq_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the spatial feature vectors of (B, C, r) maps: (B, r, r), in
    float32 and summed directly (no ``|a|^2 + |b|^2 - 2ab`` matmul, whose cancellation, or TF32, would be
    amplified by exp(-C / eps))."""
    d = torch.cdist(a.float().transpose(1, 2), b.float().transpose(1, 2),
                    compute_mode="donot_use_mm_for_euclid_dist")
    return d * d


def assignment(a: torch.Tensor, b: torch.Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 0.1,
               compiled: bool = False) -> torch.Tensor:
    """``R = r P*`` (detached, float32, autocast off) between the r spatial positions of ``a`` (rows) and
    ``b`` (columns), for (B, C, H, W) maps."""
    with torch.no_grad(), torch.autocast(a.device.type, enabled=False):
        fa, fb = a.flatten(2), b.flatten(2)
        return fa.shape[2] * sinkhorn(sq_cost(fa, fb), eps, max_iter, tol, compiled=compiled)


def align(a: torch.Tensor, b: torch.Tensor, eps: float = 0.1, max_iter: int = 100,
          tol: float = 0.1) -> torch.Tensor:
    """``b`` (B, C, H, W) rearranged into the geometry of ``a``: ``A' R^T`` with ``R`` from (a, b)."""
    R = assignment(a, b, eps, max_iter, tol).to(b.dtype)
    return (b.flatten(2) @ R.transpose(1, 2)).view(b.shape)


class AlignMix(Method):
    """AlignMixup: interpolate feature maps after aligning them with entropic optimal transport.

    Venkataramanan, Kijak, Amsaleg, Avrithis, "AlignMixup: Improving Representations By Interpolating
    Aligned Features", CVPR 2022 (official code ``shashankvkt/AlignMixup_CVPR22``).

    Per batch: ``lam ~ Beta(alpha, alpha)`` (alpha = 2) and a random permutation. With probability
    ``input_prob`` (1/2 in the paper) plain input mixup ``f(lam x + (1 - lam) x[perm])``. Otherwise, with
    ``A = F(x)`` the last stage's feature map (position ``num_stages``, before ``pool``), ``A' = A[perm]``,
    both (C, r) with r = H W spatial positions::

        M_kl = ||a_k - a'_l||^2;  P* = argmin_{P 1 = P^T 1 = 1/r} <P, M> - eps H(P)   (log-domain Sinkhorn)
        R = r P* (detached);  direction d ~ {0, 1}:
        d = 0:  mix = lam A + (1 - lam) A' R^T        (A' aligned to A's geometry)
        d = 1:  mix = lam A R + (1 - lam) A'          (A aligned to A''s geometry)
        logits = classifier(pool(mix));  y~ = lam y + (1 - lam) y[perm]

    Sinkhorn: ``eps`` 0.1, at most ``max_iter`` 100 iterations, stop when the batch-mean L1 change of u is
    below ``tol`` 0.1 (:func:`sinkhorn`); one batched call per step. ``input_prob: 0`` gives OpenMixup's
    port (alignment only). Needs a model whose last stage outputs a map with >= 2 spatial positions.

    ``compile`` (cuda): run the Sinkhorn iterations ``torch.compile``-d on CUDA devices (``always``: on any
    device, ``never``: eager). In practice Sinkhorn rarely meets the stopping test with un-normalised
    features (eps 0.1), so each aligned step runs 100 iterations of small kernels; compiling fuses them
    (the first aligned step pays the compilation). If compiling fails, a warning is given and the
    iterations run eagerly (the same result).
    """

    family = "feature"
    tasks = ("classification",)
    paper = "Venkataramanan et al., AlignMixup, CVPR 2022"
    needs = ("images", "stages")

    def __init__(self, alpha: float = 2.0, input_prob: float = 0.5, eps: float = 0.1, max_iter: int = 100,
                 tol: float = 0.1, label_smoothing: float = 0.0, compile: str = "cuda"):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("input_prob", input_prob, 0, 1)
        check_range("eps", eps, 0, low_open=True)
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise PluginError(f"max_iter must be an integer >= 1, got {max_iter}")
        check_range("tol", tol, 0)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        if compile not in ("cuda", "always", "never"):
            raise PluginError(f"compile must be one of cuda, always, never, got {compile!r}")
        self.compile, self._compile_ok = compile, None
        self.alpha, self.input_prob, self.eps, self.max_iter, self.tol = alpha, input_prob, eps, max_iter, tol
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        self.check_model(ctx.model, tuple(ctx.train.x.shape[1:]))

    def check_model(self, model: Model, input_shape: tuple[int, ...]) -> None:
        """The last stage must give a feature map (C, H, W) with H*W >= 2 (one forward pass of one example;
        on the meta device at validation time, shapes only)."""
        device = next(iter(model.parameters()), torch.zeros(())).device
        x = torch.zeros(1, *input_shape, device=device, dtype=param_dtype(model))  # a bf16 model: bf16
        was = model.training
        model.eval()
        with torch.no_grad():
            shape = tuple(model.forward_to(x, model.num_stages).shape[1:])
        model.train(was)
        if len(shape) != 3 or shape[1] * shape[2] < 2:
            raise PluginError(f"alignmix aligns the last stage's feature map (C, H, W) over its H*W >= 2 "
                              f"spatial positions; model '{type(model).__name__}' gives a representation of "
                              f"shape {shape} there; use a convolutional model such as cnn")

    def assignment(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        compiled = self.compile == "always" or (self.compile == "cuda" and a.device.type == "cuda")
        if compiled and self._compile_ok is None:  # the first compiled call: fall back if compiling fails
            try:
                R = assignment(a, b, self.eps, self.max_iter, self.tol, compiled=True)
                self._compile_ok = True
                return R
            except Exception as exc:  # noqa: BLE001 - any compiler failure; the eager path is the same math
                warnings.warn(f"alignmix: torch.compile of the Sinkhorn iterations failed ({type(exc).__name__}: "
                              f"{exc}); running them eagerly", RuntimeWarning, stacklevel=2)
                self._compile_ok = False
        return assignment(a, b, self.eps, self.max_iter, self.tol, compiled=compiled and bool(self._compile_ok))

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        n = batch.x.shape[0]
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        use_input = ctx.rng.random() < self.input_prob
        perm = permutation(ctx, n)
        lam_t = lam_tensor(lam, n, batch.x.device)
        if use_input:
            logits = model(interpolate(batch.x, perm, lam_t))
        else:
            k = model.num_stages
            a = model.forward_to(batch.x, k)
            b = a[perm]
            R = self.assignment(a, b).to(a.dtype)
            if ctx.rng.integers(2) == 0:
                mix = lam * a + (1 - lam) * (b.flatten(2) @ R.transpose(1, 2)).view(a.shape)
            else:
                mix = lam * (a.flatten(2) @ R).view(a.shape) + (1 - lam) * b
            logits = model.forward_from(mix, k)
        return MixOutput(logits, batch.y, batch.y[perm], lam_t, self.smoothing)
