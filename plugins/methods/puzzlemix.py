"""PuzzleMix (Kim, Choo, Song, ICML 2020): saliency-preserving mixing by graph cut and optimal transport."""
from __future__ import annotations

import importlib.util
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation,
                        soft_targets, to_device)
from mixcli.mixing.boxes import check_images
from mixcli.mixing.graphcut import GCO_LOCK as _GCO_LOCK

SOLVERS = ("auto", "gco", "exact")
CRITERIA = ("soft_ce", "bce_softmax")


def bce_of_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's loss, ``nn.BCELoss()(softmax(z), t)``: ``mean_{b,k} -[t log p + (1 - t) log(1 - p)]``
    over all B x K entries with ``p = softmax(z)`` and each log clamped at -100."""
    return F.binary_cross_entropy(torch.softmax(logits.float(), dim=1), target)

#: gco is not thread-safe: every gco call holds this lock, shared with every other graph-cut method
#: (mixcli.mixing.graphcut; tests/plugins/test_gco_threads.py)
GCO_LOCK = _GCO_LOCK


def input_saliency(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean_c (d CE / d x)^2)`` (B, H, W): the gradient of the batch-mean cross-entropy with respect to
    the input, from an extra forward/backward with the model in eval mode (the reference's saliency; only
    the input gradient is taken, the parameters' gradients are untouched). Each module's mode is restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            xv = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xv).float(), y)
            (g,) = torch.autograd.grad(loss, xv)
    finally:
        for m, t in modes:
            m.training = t
    return g.float().pow(2).mean(1).sqrt()


def divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` that is <= ``k`` (``k`` itself when it divides ``n``)."""
    return next(d for d in range(max(1, min(k, n)), 0, -1) if n % d == 0)


def neigh_for(width: int, n: int, neigh_size: int) -> int:
    """The pooling size of the smoothness terms for grid side ``n``: the reference's ``min(neigh_size, block)``
    wherever its pooled block borders give the (n - 1, n) terms, else (where the reference crashes with a
    shape error, e.g. 28x28 images) the largest size <= it that divides the block."""
    block = width // n
    neigh = min(neigh_size, block)
    m, k = width // neigh, block // neigh
    if m // k == n and len(range(k - 1, m - 1, k)) == n - 1:
        return neigh
    return divisor_at_most(block, neigh)


def cost_matrix(n: int, device=None) -> torch.Tensor:
    """Transport cost between the n x n blocks: squared grid distance / (n - 1)^2, (n^2, n^2)."""
    r = torch.arange(n * n, device=device)
    i, j = r // n, r % n
    return (((i[:, None] - i[None, :]) ** 2 + (j[:, None] - j[None, :]) ** 2).float() / (n - 1) ** 2)


def neigh_penalty(a: torch.Tensor, b: torch.Tensor, k: int):
    """The reference's data-smoothness terms between vertically / horizontally adjacent blocks of pooled
    images ``a`` and ``b`` (B, C, h, w): mean |a - b| across each block border, (B, n-1, n) and (B, n, n-1)."""
    pw_x = (a[:, :, :-1, :] - b[:, :, 1:, :])[:, :, k - 1::k, :]
    pw_y = (a[:, :, :, :-1] - b[:, :, :, 1:])[:, :, :, k - 1::k]
    return F.avg_pool2d(pw_x.abs().mean(1), kernel_size=(1, k)), F.avg_pool2d(pw_y.abs().mean(1), kernel_size=(k, 1))


def graph_terms(x: torch.Tensor, sal: torch.Tensor, perm: torch.Tensor, n: int, beta: float, gamma: float,
                neigh_size: int):
    """Batched unary and pairwise terms of the reference's ``mixup_graph`` (on the device).

    ``x`` are the images in [0, 1] pixel units (B, C, H, W), ``sal`` the saliency (B, H, W), ``n`` the grid
    side. Returns ``(u_self, u_partner, pw_x, pw_y, beta_n, sal_pool)``: the block saliency of each image and
    of its partner normalised to sum 1 plus the smoothness terms folded in, the pairwise weights of vertical
    and horizontal block edges, beta normalised as ``beta / n / 16``, and the normalised block saliency."""
    b, _, _, width = x.shape
    block = width // n
    neigh = neigh_for(width, n, neigh_size)
    beta_n = beta / n / 16
    pool = F.avg_pool2d(sal.unsqueeze(1), block).squeeze(1)
    u1 = pool / pool.reshape(b, -1).sum(1).reshape(b, 1, 1)
    u2 = u1[perm]
    p1 = F.avg_pool2d(x, neigh)
    p2 = p1[perm]
    k = block // neigh
    px, py = {}, {}
    for (i, j), (s, t) in {(0, 0): (p2, p2), (0, 1): (p2, p1), (1, 0): (p1, p2), (1, 1): (p1, p1)}.items():
        ax, ay = neigh_penalty(s, t, k)
        px[i, j], py[i, j] = beta_n * gamma * ax, beta_n * gamma * ay
    a1, a2 = u1.clone(), u2.clone()
    a2[:, :-1, :] += (px[1, 0] + px[1, 1]) / 2
    a1[:, :-1, :] += (px[0, 1] + px[0, 0]) / 2
    a2[:, 1:, :] += (px[0, 1] + px[1, 1]) / 2
    a1[:, 1:, :] += (px[1, 0] + px[0, 0]) / 2
    a2[:, :, :-1] += (py[1, 0] + py[1, 1]) / 2
    a1[:, :, :-1] += (py[0, 1] + py[0, 0]) / 2
    a2[:, :, 1:] += (py[0, 1] + py[1, 1]) / 2
    a1[:, :, 1:] += (py[1, 0] + py[0, 0]) / 2
    pw_x = (px[1, 0] + px[0, 1] - px[1, 1] - px[0, 0]) / 2
    pw_y = (py[1, 0] + py[0, 1] - py[1, 1] - py[0, 0]) / 2
    return a1, a2, pw_x, pw_y, beta_n, u1


def label_costs(u_self: np.ndarray, u_partner: np.ndarray, lam: float, eta: float, n_labels: int,
                eps: float = 1e-8) -> np.ndarray:
    """Unary costs (n, n, L) of label l (mask value 1 - l / (L - 1)): ``(1 - t_l) u_partner + t_l u_self +
    eta prior_l / n^2``, t_l = l / (L - 1), with the binomial prior ``-log C(L-1, l) lam^(L-1-l) (1-lam)^l``."""
    from math import comb
    m = n_labels - 1
    prior = np.array([-np.log(comb(m, l) * lam ** (m - l) * (1 - lam) ** l + eps) for l in range(n_labels)])
    prior = eta * prior / u_self.shape[0] ** 2
    return np.stack([(1 - t) * u_partner + t * u_self + prior[l] for l, t in enumerate(np.linspace(0, 1, n_labels))],
                    axis=-1)


def graphcut_mask(u_self, u_partner, pw_x, pw_y, lam, beta_n, eta, n_labels, solver: str = "gco") -> np.ndarray:
    """The reference's ``graphcut_multi``: alpha-beta swap (gco) on the integer-scaled energy (scale
    1000 n^2), pairwise ``(i - j)^2 / (L - 1)^2`` times the edge weights ``pw + beta_n``; returns the mask
    (n, n) with values 1 - label / (L - 1) (1 = keep the image, 0 = take the partner). ``solver: exact``
    minimises the same energy globally (:func:`exact_labels`) instead of by swap moves."""
    n = u_self.shape[0]
    large = 1000 * n ** 2
    unary = (large * label_costs(u_self, u_partner, lam, eta, n_labels)).astype(np.int32)
    lab = np.arange(n_labels)
    pairwise = ((lab[:, None] - lab[None, :]) ** 2 / (n_labels - 1) ** 2).astype(np.float32)
    cost_v = (large * (pw_x + beta_n)).astype(np.int32)
    cost_h = (large * (pw_y + beta_n)).astype(np.int32)
    if solver == "exact":
        labels = exact_labels(unary, np.maximum(cost_v, 0), np.maximum(cost_h, 0), n_labels)
    else:
        import gco
        with GCO_LOCK:  # gco is not thread-safe (see GCO_LOCK)
            labels = gco.cut_grid_graph(unary, pairwise, cost_v, cost_h, algorithm="swap")
    return (1.0 - labels / (n_labels - 1)).reshape(n, n)


def exact_labels(unary: np.ndarray, cost_v: np.ndarray, cost_h: np.ndarray, n_labels: int) -> np.ndarray:
    """The global minimum of the reference's grid energy, by one min-cut (Ishikawa, PAMI 2003).

    ``E(x) = sum_p unary[p, x_p] + sum_(p,q) w_pq (x_p - x_q)^2 / (L - 1)^2`` over a 4-connected n x n grid
    (``cost_v``: weights between rows, ``cost_h``: between columns; all >= 0, integers). Each pixel gets a
    chain of L - 1 binary nodes u_k = [x >= k] (infinite reverse edges keep a chain monotone);
    ``D(x) = D(0) + sum_k u_k (D(k) - D(k-1))`` and ``(x_p - x_q)^2 = sum_k (2k - L)(u_pk + u_qk) +
    sum_jk [u_pj (1 - u_qk) + u_qk (1 - u_pj)]`` make every term a cut edge, so the minimum cut (scipy's
    max-flow) is an exact minimiser (everything is scaled by (L - 1)^2 to stay integral). Returns the
    labels (n * n,) in row-major order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow
    h, w, lab = unary.shape
    npx, k = h * w, lab - 1
    s, t = npx * k, npx * k + 1
    d = unary.reshape(npx, lab).astype(np.int64) * k * k
    coef = d[:, 1:] - d[:, :-1]                                   # (npx, k): the weight of u_pk
    ids = np.arange(npx).reshape(h, w)
    pairs = [(ids[:-1, :].ravel(), ids[1:, :].ravel(), cost_v.ravel().astype(np.int64)),
             (ids[:, :-1].ravel(), ids[:, 1:].ravel(), cost_h.ravel().astype(np.int64))]
    rows, cols, caps = [], [], []
    slope = 2 * np.arange(1, lab) - lab                           # (2k - L) for k = 1..L-1
    for p, q, wt in pairs:
        np.add.at(coef, p, wt[:, None] * slope[None, :])
        np.add.at(coef, q, wt[:, None] * slope[None, :])
        for j in range(k):
            for kk in range(k):
                rows += [p * k + j, q * k + kk]
                cols += [q * k + kk, p * k + j]
                caps += [wt, wt]
    node = np.arange(npx * k).reshape(npx, k)
    pos, neg = coef > 0, coef < 0
    rows += [node[pos], np.full(int(neg.sum()), s)]
    cols += [np.full(int(pos.sum()), t), node[neg]]
    caps += [coef[pos], -coef[neg]]
    finite = sum(int(np.abs(c).sum()) for c in caps) + 1
    if k > 1:  # u_(k+1) <= u_k: an infinite edge from (k+1) to k
        rows.append(node[:, 1:].ravel())
        cols.append(node[:, :-1].ravel())
        caps.append(np.full(npx * (k - 1), finite))
    if finite >= 2 ** 31:
        raise PluginError("puzzlemix exact solver: the energy is too large for 32-bit capacities")
    r, c, v = (np.concatenate([np.atleast_1d(a) for a in x]) for x in (rows, cols, caps))
    graph = coo_matrix((v.astype(np.int32), (r, c)), shape=(t + 1, t + 1)).tocsr()
    flow = maximum_flow(graph, s, t).flow
    residual = (graph - flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int32)
    residual.eliminate_zeros()
    source_side = np.zeros(t + 1, dtype=bool)
    source_side[breadth_first_order(residual, s, directed=True, return_predecessors=False)] = True
    return source_side[:s].reshape(npx, k).sum(1)


def mask_transport(mask: torch.Tensor, sal_pool: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference's greedy transport plan (B, N, N), N = n^2 blocks: each block's row picks the cheapest
    destination of ``eps C - s_i [mask_j > 0]``; when several rows claim one destination, the cheapest
    keeps it and the others pay +1 and retry; n rounds. ``plan[b, i, j] = 1``: block i moves to j."""
    b, n = mask.shape[0], mask.shape[-1]
    c = cost_matrix(n, mask.device)
    z = (mask > 0).float()
    cost = eps * c - sal_pool.reshape(b, n * n, 1) * z.reshape(b, 1, n * n)
    plan_win = torch.zeros_like(cost)
    for _ in range(n):
        row_best = cost.min(-1)[1]
        plan = torch.zeros_like(cost).scatter_(-1, row_best.unsqueeze(-1), 1)
        col_best = (plan * cost).min(-2)[1]
        plan_win = torch.zeros_like(cost).scatter_(-2, col_best.unsqueeze(-2), 1) * plan
        cost = cost + (1 - plan_win) * plan
    return plan_win


def transport_image(x: torch.Tensor, plan: torch.Tensor, n: int) -> torch.Tensor:
    """Move the n x n blocks of ``x`` (B, C, H, W) by ``plan``: block j of the result is
    ``sum_i plan[i, j] block_i`` (row-major block order)."""
    b, c, h, w = x.shape
    s = h // n
    blocks = x.reshape(b, c, n, s, n, s).permute(0, 1, 2, 4, 3, 5).reshape(b, c, n * n, s * s)
    with torch.autocast(x.device.type, enabled=False):  # a permutation of pixels: exact in x's own dtype
        moved = torch.einsum("bij,bcip->bcjp", plan.to(x.dtype), blocks)
    return moved.reshape(b, c, n, n, s, s).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


class PuzzleMix(Method):
    """PuzzleMix: mix by a saliency-aware graph-cut mask and move salient blocks by optimal transport.

    Kim, Choo, Song, "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup", ICML 2020;
    steps and defaults of the reference (snu-mllab/PuzzleMix ``mixup.py``/``main.py``, CIFAR-100 command).

        s = sqrt(mean_c (dCE/dx)^2)   (an extra forward/backward in eval mode, :func:`input_saliency`)
        n ~ U(block_num);  lam ~ Beta(alpha, alpha);  j = perm(i)
        z* = argmin_z  sum_blocks [(1 - t_z) s_j + t_z s_i + eta/n^2 prior_lam(z)]
                       + sum_edges (beta/16n + gamma-weighted local pixel differences) (z_p - z_q)^2/(L-1)^2
             (L = n_labels mask levels t in {0, 1/(L-1), .., 1}; alpha-beta swap graph cut, :func:`graphcut_mask`)
        M = 1 - z*/(L-1);  x_i, x_j moved block-wise by the greedy transport plans of M and 1 - M (t_eps, t_size)
        x~ = M x_i' + (1 - M) x_j';   y~ = lam' y_i + (1 - lam') y_j,  lam' = mean(M)

    The terms, the transport and the mixing are batched on the device; the graph cut runs per image on the
    CPU with the ``gco-wrapper`` package (the reference's pyGCO, ``pip install "mixcli[puzzlemix]"``), on
    ``graph_threads`` threads for the exact solver (null: the job's torch threads, ``mixcli run --threads``;
    gco is not thread-safe, its cuts run one at a time; the reference uses 8 processes): one host
    synchronisation per step. ``solver``: ``gco`` (the reference's alpha-beta swap, a local minimum), ``exact`` (the global
    minimum of the same integer energy by one min-cut per image, :func:`exact_labels`; no extra package; it
    can differ from the swap's labeling where the swap stops early), ``auto`` (gco when installed, else exact
    with a warning). Options: ``alpha`` (1.0), ``block_num`` ([2, 4, 8, 16]: grid sides drawn
    uniformly per batch, as the reference's ``2 ** randint(1, 5)``; sides that do not divide the image are
    dropped, so 8x8 digits use 2, 4, 8), ``beta`` (1.2), ``gamma`` (0.5), ``eta`` (0.2), ``neigh_size`` (4),
    ``n_labels`` (3), ``transport`` (true), ``t_eps`` (0.8), ``t_size`` (4; -1 = the graph-cut grid),
    ``label_smoothing`` (0.0).

    The loss: ``criterion: soft_ce`` (default) leaves it to the run's loss plugin (soft_ce: the mixed
    cross-entropy ``-sum_k t_k log softmax(z)_k`` with ``t = lam' y_i + (1 - lam') y_j``, as OpenMixup and the
    paper's ``l(f(x~), y~)``). ``criterion: bce_softmax`` is the reference's (``main.py``: ``bce_loss =
    nn.BCELoss()``, ``loss = bce_loss(softmax(output), reweighted_target)``)::

        L_ref = mean_{b,k} -[t_bk log p_bk + (1 - t_bk) log(1 - p_bk)],   p = softmax(f(x~))

    It is about K times smaller than the cross-entropy (the reference pairs it with its own schedule: lr 0.2,
    1200 epochs on CIFAR-100) and also pushes the non-target probabilities down. Its adversarial (``adv_p``) and clean-loss (``clean_lam``) options, both off in
    the CIFAR setting, are not implemented. Images must be square.
    """

    family = "input"
    paper = "Kim et al., Puzzle Mix, ICML 2020"
    needs = ("images", "normalization", "class_labels")
    tasks = ("classification",)

    def __init__(self, alpha: float = 1.0, block_num: list = (2, 4, 8, 16), beta: float = 1.2, gamma: float = 0.5,
                 eta: float = 0.2, neigh_size: int = 4, n_labels: int = 3, transport: bool = True,
                 t_eps: float = 0.8, t_size: int = 4, label_smoothing: float = 0.0, graph_threads: int | None = None,
                 solver: str = "auto", criterion: str = "soft_ce"):
        if criterion not in CRITERIA:
            raise PluginError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        check_range("alpha", alpha, 0, low_open=True)
        block_num = [block_num] if isinstance(block_num, int) else list(block_num)
        if not block_num or not all(isinstance(v, int) and v >= 2 for v in block_num):
            raise PluginError(f"block_num must be a list of grid sides >= 2, got {block_num}")
        for name, v in (("beta", beta), ("gamma", gamma), ("eta", eta), ("t_eps", t_eps)):
            check_range(name, v, 0)
        if not (isinstance(neigh_size, int) and neigh_size >= 1):
            raise PluginError(f"neigh_size must be an integer >= 1, got {neigh_size}")
        if n_labels not in (2, 3, 4):
            raise PluginError(f"n_labels must be 2, 3 or 4 (the reference's mask levels), got {n_labels}")
        if not (isinstance(t_size, int) and (t_size == -1 or t_size >= 1)):
            raise PluginError(f"t_size must be -1 (the graph-cut grid) or an integer >= 1, got {t_size}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        if graph_threads is not None and not (isinstance(graph_threads, int) and graph_threads >= 1):
            raise PluginError(f"graph_threads must be an integer >= 1 or null, got {graph_threads}")
        self.graph_threads = graph_threads
        if solver not in SOLVERS:
            raise PluginError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.solver = solver
        self.alpha, self.block_num, self.beta, self.gamma, self.eta = alpha, block_num, beta, gamma, eta
        self.neigh_size, self.n_labels, self.transport, self.t_eps, self.t_size = (neigh_size, n_labels,
                                                                                   bool(transport), t_eps, t_size)
        self.smoothing = label_smoothing

    def check_input(self, input_shape) -> None:
        """Square images with a side that one of the ``block_num`` grid sides divides (checked by ``validate``)."""
        super().check_input(input_shape)
        h, w = int(input_shape[-2]), int(input_shape[-1])
        if h != w:
            raise PluginError(f"puzzlemix needs square images, got {h}x{w}")
        if not [n for n in self.block_num if w % n == 0 and n <= w]:
            raise PluginError(f"block_num {self.block_num}: no grid side divides the image width {w} "
                              "(give block_num sides that divide it)")

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "puzzlemix")
        # null: the job's own torch thread count (mixcli run --threads, 1 by default), so that a job never
        # uses more cores than it was given; the labels do not depend on it
        self.threads = self.graph_threads or torch.get_num_threads()
        have_gco = importlib.util.find_spec("gco") is not None
        if self.solver == "gco" and not have_gco:
            raise PluginError('puzzlemix solver gco needs the gco-wrapper package: pip install "mixcli[puzzlemix]" '
                              '(or use solver: exact)')
        self.use = "gco" if self.solver == "gco" or (self.solver == "auto" and have_gco) else "exact"
        if self.use == "exact" and self.solver == "auto":
            warnings.warn('puzzlemix: gco-wrapper is not installed, so the graph cut is solved exactly by min-cut '
                          'instead of the reference\'s alpha-beta swap; pip install "mixcli[puzzlemix]" for the '
                          'reference labeling', stacklevel=2)
        h, w = ctx.train.x.shape[-2:]
        if h != w:
            raise PluginError(f"puzzlemix needs square images, got {h}x{w}")
        self.sides = [n for n in self.block_num if w % n == 0 and n <= w]
        if not self.sides:
            raise PluginError(f"block_num {self.block_num}: no grid side divides the image width {w}")
        data = ctx.data
        c = ctx.train.x.shape[1]
        mean = data.mean if data is not None and data.mean is not None else (0.0,) * c
        std = data.std if data is not None and data.std is not None else (1.0,) * c
        self.mean = torch.tensor(mean, device=ctx.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=ctx.device).view(1, -1, 1, 1)

    def mix(self, x, sal, perm, lam: float, n: int):
        """(mixed images, lam' per row) for grid side ``n``: the whole method after the random draws."""
        b, _, _, width = x.shape
        block = width // n
        u1, u2, pw_x, pw_y, beta_n, sal_pool = graph_terms(
            x.float() * self.std + self.mean, sal, perm, n, self.beta, self.gamma, self.neigh_size)
        # one device-to-host copy (one sync) for the four terms, float32 as the reference
        flat = torch.cat([t.detach().float().reshape(b, -1) for t in (u1, u2, pw_x, pw_y)], 1).cpu().numpy()
        sizes = np.cumsum([0] + [t[0].numel() for t in (u1, u2, pw_x, pw_y)])
        host = [flat[:, lo:hi].reshape(b, *t.shape[1:]) for lo, hi, t in zip(sizes[:-1], sizes[1:], (u1, u2, pw_x, pw_y))]
        def cut(i):
            return graphcut_mask(host[0][i], host[1][i], host[2][i], host[3][i], lam, beta_n, self.eta, self.n_labels,
                                 self.use)

        # (gco's cuts are serialised by GCO_LOCK: only the exact solver's cuts run in parallel)
        if self.threads > 1 and self.use == "exact":
            if getattr(self, "_pool", None) is None:
                self._pool = ThreadPoolExecutor(self.threads)
            masks = np.stack(list(self._pool.map(cut, range(b))))
        else:
            masks = np.stack([cut(i) for i in range(b)])
        mask = to_device(masks, x.device, np.float32).unsqueeze(1)
        x1, x2 = x, x[perm]
        if self.transport:
            t_size = block if self.t_size == -1 else min(self.t_size, block)
            # transport blocks must tile the image (the reference crashes otherwise, e.g. 30x30 images): the
            # largest tile size <= t_size that divides the width, equal to the reference's wherever it runs
            t_size = divisor_at_most(width, t_size)
            t_n = n
            if t_size < block:
                t_n = width // t_size
                mask = F.interpolate(mask, size=t_n)
                pool = F.avg_pool2d(sal.unsqueeze(1), t_size).squeeze(1)
                sal_pool = pool / pool.reshape(b, -1).sum(1).reshape(b, 1, 1)
            x1 = transport_image(x1, mask_transport(mask, sal_pool, self.t_eps), t_n)
            x2 = transport_image(x2, mask_transport(1 - mask, sal_pool[perm], self.t_eps), t_n)
        mask = F.interpolate(mask, size=width)
        ratio = mask.reshape(b, -1).mean(-1)
        m = mask.to(x.dtype)
        return m * x1 + (1 - m) * x2, ratio

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, b = batch.x, batch.y, batch.x.shape[0]
        n = self.sides[int(ctx.rng.integers(len(self.sides)))]
        perm = permutation(ctx, b)
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        sal = input_saliency(model, x, y)
        mixed, ratio = self.mix(x, sal, perm, lam, n)
        out = MixOutput(model(mixed), y, y[perm], ratio.float(), self.smoothing)
        if self.criterion == "bce_softmax":
            out.loss = bce_of_softmax(out.logits, soft_targets(out, ctx.num_classes))
        return out
