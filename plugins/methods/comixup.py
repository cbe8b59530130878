"""Co-Mixup (Kim, Choo, Jeong, Song, ICLR 2021): batch-level mixing of many inputs by submodular optimisation."""
from __future__ import annotations

from math import ceil

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, to_device
from mixcli.mixing.boxes import check_images
from mixcli.mixing.graphcut import GCO_LOCK, have_gco
from mixcli.mixing.saliency import gradient_saliency

THRES_TYPES = ("hard", "soft")
THRES_FORMS = ("reference", "elementwise")
CRITERIA = ("soft_ce", "bce_softmax")
#: the three two-input soft labels of the reference's multi-label extension (rows: soft label; columns: the
#: three most used inputs, in index order); symmetric, so rows and columns may be read either way
SOFT3 = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
PW3 = np.array([[0.25, 0.25, 1.0], [0.25, 1.0, 0.25], [1.0, 0.25, 0.25]], dtype=np.float32)


def compat_matrix(sal: torch.Tensor, window: int = 8) -> torch.Tensor:
    """The reference's compatibility distances (B, B): the L1 distance between the positions (row, column) of
    each saliency map's most salient ``window`` x ``window`` window (``avg_pool2d(s, window, stride 1)``'s
    argmax; the window shrinks to the image side on smaller images)."""
    b, h, w = sal.shape
    k = min(window, h, w)
    z = F.avg_pool2d(sal.unsqueeze(1), kernel_size=k, stride=1).squeeze(1)
    i = torch.argmax(z.reshape(b, -1), dim=1)
    pos = torch.stack([i // z.shape[-1], i % z.shape[-1]], 1).float()
    return (pos[:, None] - pos[None, :]).abs().sum(-1)


def obj_fn(cost: torch.Tensor, mask: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The reference's objective (no threshold): ``sum c . z + beta/2 sum_edges |z_p - z_q|^2 +
    gamma (|sum_o n_o|^2 - sum_o |n_o|^2)`` with ``n_o`` the per-input block counts of output o."""
    n_out, h, w, n_in = mask.shape
    counts = mask.reshape(n_out, h * w, n_in).sum(1)
    loss = torch.sum(cost.permute(1, 2, 0).unsqueeze(0) * mask)
    loss = loss + beta / 2 * (((mask[:, :-1] - mask[:, 1:]) ** 2).sum() + ((mask[:, :, :-1] - mask[:, :, 1:]) ** 2).sum())
    return loss + gamma * (torch.sum(counts.sum(0) ** 2) - torch.sum(counts ** 2))


def resolve_label(assigned: torch.Tensor) -> torch.Tensor:
    """The reference's post-processing against identical outputs: for each pair of outputs (o1 < o2) using the
    same set of inputs (of two or more), the first pays 1 for its first input and the second for its second."""
    add = torch.zeros_like(assigned)
    dist = torch.clamp((assigned.unsqueeze(1) - assigned.unsqueeze(0)).abs().sum(-1), max=1.0)
    for i1, i2 in torch.triu(1.0 - dist, diagonal=1).nonzero().tolist():
        nz = assigned[i1].nonzero().flatten()
        if len(nz) > 1:
            add[i1, nz[0]] = 1.0
            add[i2, nz[1]] = 1.0
    return add


def graphcut(unary: np.ndarray, beta: float, n_extra: int = 0, used=None) -> np.ndarray:
    """The reference's ``graphcut_multi``: alpha-beta swap (gco) on the float grid energy ``sum_p unary[p, l_p]
    + beta sum_edges P[l_p, l_q]`` with Potts ``P = 1 - I`` over the inputs; ``n_extra`` (2 or 3) soft labels
    appended after them cost 0.25 against the inputs they mix (``used``: a boolean mask of those inputs) and 1
    against every other label. Returns the labels (h * w,)."""
    import gco
    h, w, n = unary.shape
    pairwise = np.ones((n, n), dtype=np.float32) - np.eye(n, dtype=np.float32)
    if n_extra == 2:
        pairwise[-1, :-1][used] = 0.25
        pairwise[:-1, -1][used] = 0.25
    elif n_extra == 3:
        pairwise[-3:, :-3][:, used] = PW3
        pairwise[:-3, -3:][used, :] = PW3
    cost_v = beta * np.ones((h - 1, w), dtype=np.float32)
    cost_h = beta * np.ones((h, w - 1), dtype=np.float32)
    with GCO_LOCK:  # gco is not thread-safe (mixcli.mixing.graphcut)
        return gco.cut_grid_graph(np.ascontiguousarray(unary), pairwise, cost_v, cost_h, algorithm="swap")


def onehot(idx: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(idx.long(), n).float()


def update_output(cost: torch.Tensor, counts: torch.Tensor, beta: float, iteration: int) -> torch.Tensor:
    """The reference's ``graphcut_wrapper``: one output's new labeling (h, w, n_in) given its unary costs
    ``cost`` (h, w, n_in) and its current per-input block counts. From the second outer iteration on, an
    output using exactly two inputs may also label a block half-half (cost: their mean - 5e-4), one using
    three or more may use the three half-half pairs of its three most used inputs."""
    h, w, n = cost.shape
    used = counts > 0
    n_used = int(used.sum()) if iteration > 0 else 0
    if n_used == 2:
        extra = cost[:, :, used].mean(-1, keepdim=True) - 5e-4
        labels = graphcut(torch.cat([cost, extra], -1).numpy(), beta, 2, used.numpy())
        oh = onehot(torch.from_numpy(np.asarray(labels)), n + 1).reshape(h, w, n + 1)
        half = torch.zeros(1, 1, n)
        half[:, :, used] = 0.5
        return oh[:, :, :n] + oh[:, :, n:] * half
    if n_used >= 3:
        _, top = torch.topk(counts, k=3)
        used = torch.zeros_like(used)
        used[top] = True
        extra = torch.matmul(cost[:, :, used], SOFT3) - 5e-4
        labels = graphcut(torch.cat([cost, extra], -1).numpy(), beta, 3, used.numpy())
        oh = onehot(torch.from_numpy(np.asarray(labels)), n + 3).reshape(h, w, n + 3)
        soft = torch.zeros(3, n)
        soft[:, used] = SOFT3
        return oh[:, :, :n] + torch.matmul(oh[:, :, n:], soft)
    labels = graphcut(cost.numpy(), beta)
    return onehot(torch.from_numpy(np.asarray(labels)), n).reshape(h, w, n)


def modular_penalty(compat: torch.Tensor, p: torch.Tensor, gamma: float, thres: float, thres_type: str = "hard",
                    form: str = "reference") -> torch.Tensor:
    """The modular approximation of the diversity term at the other outputs' per-input counts ``p`` (m,),
    one cost per input. With ``q = A p`` (the compatibility-weighted counts):

    - ``hard``, ``form: reference``: the official ``(A @ p > thres).float() * A @ p``, which Python reads
      as ``((q > tau) * A) @ p``, i.e. ``sum_j [q_j > tau] A_ij p_j`` (the threshold masks A's columns);
    - ``hard``, ``form: elementwise``: ``[q_i > tau] q_i`` (the threshold on each input's own weighted count;
      equal to the reference when A = I, i.e. ``m_omega: 0``);
    - ``soft``: ``[q_i > tau] (q_i - tau)`` (both forms).

    Each times ``2 gamma``."""
    q = compat @ p
    if thres_type == "soft":
        return 2 * gamma * ((q > thres).float() * (q - thres))
    if form == "reference":
        return 2 * gamma * (((q > thres).float() * compat) @ p)
    return 2 * gamma * ((q > thres).float() * q)


def comix_labeling(cost: torch.Tensor, compat: torch.Tensor, prior: np.ndarray, init: np.ndarray, beta: float,
                   gamma: float, eta: float, thres: float, thres_type: str = "hard", set_resolve: bool = True,
                   niter: int = 4, thres_form: str = "reference") -> torch.Tensor:
    """The reference's ``get_onehot_matrix``: the labeling (m', h, w, m) of m' = m outputs over the m inputs.

    ``cost`` (m, h, w): the negative normalised block saliency; ``compat`` (m, m): A = (1 - omega) I +
    omega A_dist; ``prior`` (m,): the Dirichlet draw; ``init`` (m', h, w): the random initial labels. The
    coefficients are per block (``beta / hw`` etc.) and ``thres`` is ``tau hw``, the threshold on the
    compatibility-weighted counts of the other outputs. Each outer iteration updates the outputs one by one
    (block coordinate descent with the supermodular diversity term made modular at the other outputs'
    counts, then one graph cut); it stops early when the objective changes by less than 1e-6 relatively."""
    m, h, w = cost.shape
    n_out = init.shape[0]
    cost = cost - eta * torch.log(torch.as_tensor(prior, dtype=torch.float32).reshape(m, 1, 1) + 1e-8)
    mask = onehot(torch.from_numpy(np.asarray(init)).reshape(-1), m).reshape(n_out, h, w, m)
    loss_prev = obj_fn(cost, mask, beta, gamma)
    penalty = mask.reshape(-1, m).sum(0).reshape(-1, 1, 1)
    add_cost = None
    for it in range(niter):
        for i in range(n_out):
            counts = mask[i].reshape(h * w, m).sum(0)
            penalty = penalty - counts.reshape(-1, 1, 1)
            modular = modular_penalty(compat, penalty.reshape(-1), gamma, thres, thres_type, thres_form)
            c = cost + modular.reshape(-1, 1, 1)
            if add_cost is not None:
                c = c + gamma * add_cost[i].reshape(-1, 1, 1)
            mask[i] = update_output(c.permute(1, 2, 0).contiguous(), counts, beta, it)
            penalty = penalty + mask[i].reshape(h * w, m).sum(0).reshape(-1, 1, 1)
        if it == niter - 2 and set_resolve:
            add_cost = resolve_label((mask.reshape(n_out, -1, m).sum(1) > 0).float())
        loss = obj_fn(cost, mask, beta, gamma)
        if (loss_prev - loss).abs() / loss.abs() < 1e-6:
            break
        loss_prev = loss
    return mask


def mix_input(mask: torch.Tensor, x: torch.Tensor, y_onehot: torch.Tensor):
    """The reference's ``mix_input``: outputs ``x~_o = sum_k up(z_o,k) * x_k`` (nearest upsampling of the
    block labels to the image) and soft targets ``y~_o = sum_k |z_o,k| y_k / sum(...)`` (each input's share
    of the blocks)."""
    n_out, h, w, n_in = mask.shape
    up = F.interpolate(mask.permute(0, 3, 1, 2), size=x.shape[-1], mode="nearest")
    out = torch.einsum("okhw,kchw->ochw", up.to(x.dtype), x)
    target = torch.matmul(mask, y_onehot).reshape(n_out, h * w, -1).sum(-2)
    return out, target / target.sum(-1, keepdim=True)


def bce_of_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``nn.BCELoss()(softmax(z), t)``: the mean over all B x K entries of ``-[t log p + (1-t) log(1-p)]``."""
    return F.binary_cross_entropy(torch.softmax(logits.float(), dim=1), target)


class CoMixup(Method):
    """Co-Mixup: batch-level mixing of many inputs per output by submodular-supermodular optimisation.

    Kim, Choo, Jeong, Song, "Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity", ICLR 2021;
    the steps and defaults of the official code (snu-mllab/Co-Mixup ``main.py`` / ``mixup.py`` / ``match.py``,
    the CIFAR-100 command of its README). Per step, on partitions of ``m_part`` consecutive rows (m inputs,
    m' = m outputs):

        s = sqrt(mean_c (dCE/dx)^2)  (the saliency forward: in training mode, and its loss kept, when
                                      clean_lam > 0; in eval mode otherwise)
        c_k = -pool(s_k) / sum pool(s_k) - eta log(p_k),  p ~ Dir(alpha 1_m)   (on an n x n block grid)
        A = (1 - omega) I + omega m A_dist / sum A_dist,  A_dist: L1 distance of the most salient 8x8 windows
        z* = argmin_z  sum_o [c . z_o + beta sum_edges [z_o,p != z_o,q]]
                       + gamma sum_{o != o'} n_o^T A n_o'  (thresholded at tau: the diversity term)
             with z_o,b a one-hot over the inputs (later also half-half pairs), n_o = sum_b z_o,b
        x~_o = sum_k up(z*_o,k) x_k,   y~_o = sum_k n_o,k y_k / sum_k n_o,k

    The supermodular term is made modular at the other outputs' counts and each output is relabeled in turn by
    an alpha-beta swap graph cut (gco-wrapper, ``pip install "mixcli[puzzlemix]"``; its calls hold the lock
    of :mod:`mixcli.mixing.graphcut`), ``m_niter`` outer rounds (coefficients per block: beta/n^2, gamma/n^2,
    eta/n^2, tau n^2; :func:`comix_labeling`). The labeling runs on the CPU (one host copy of the pooled
    saliency per step); mixing and targets on the device. There is no substitute solver: without gco the
    method refuses to start (the multi-label Potts energy has no exact min-cut, unlike PuzzleMix's).

    The loss (the targets mix up to m labels, so the method sets it): ``criterion: bce_softmax`` (default, the
    official code, whose published numbers come from it; described below) or ``criterion: soft_ce`` (as
    puzzlemix: the paper's ``l(f(x~), y~)`` as the mixed cross-entropy ``-sum y~ log softmax(f(x~))``) plus,
    with ``clean_lam`` > 0, the clean term of the saliency forward ``2 clean_lam CE(f(x), y)``;
    ``bce_softmax`` is the reference's ``nn.BCELoss()(softmax(f(x~)), y~)`` plus its clean term
    ``2 clean_lam / K * CE(f(x), y)`` (the same ratio to the mixed loss, which is about K times smaller
    than the cross-entropy). The clean term's gradient is accumulated in the same backward, as the
    reference's ``backward(retain_graph=True)``. The run's loss plugin is not used. ``y_a``/``y_b``/
    ``lam`` of the output hold each row's two largest class shares (a two-label view, for train metrics only).

    Options and defaults (the CIFAR-100 command): ``alpha`` (2.0, the Dirichlet prior), ``m_block_num``
    (4; -1 draws 2, 4, 8 or 16 per step), ``m_part`` (20), ``m_beta`` (0.32), ``m_gamma`` (1.0),
    ``m_thres`` (0.83), ``m_thres_type`` (hard), ``m_eta`` (0.05), ``m_omega`` (0.001), ``set_resolve``
    (true), ``m_niter`` (4), ``clean_lam`` (1.0). Reference behaviour kept: the hard threshold's operator
    precedence (``m_thres_form: reference``; ``elementwise`` thresholds each input's own weighted count:
    :func:`modular_penalty`). Differences: the compatibility window shrinks to the image side
    on images smaller than 8x8, and ``A_dist`` is taken as 0 when all its distances are 0 (the reference
    divides by 0 there); batches that are not a multiple of ``m_part`` end with a smaller partition (the
    reference's ``mixup_process`` does the same; its ``main.py`` reshapes by the configured batch size).
    Images must be square.
    """

    family = "input"
    paper = "Kim et al., Co-Mixup, ICLR 2021"
    needs = ("images", "class_labels")
    tasks = ("classification",)

    def __init__(self, alpha: float = 2.0, m_block_num: int = 4, m_part: int = 20, m_beta: float = 0.32,
                 m_gamma: float = 1.0, m_thres: float = 0.83, m_thres_type: str = "hard", m_eta: float = 0.05,
                 m_omega: float = 0.001, set_resolve: bool = True, m_niter: int = 4, clean_lam: float = 1.0,
                 criterion: str = "bce_softmax", m_thres_form: str = "reference"):
        check_range("alpha", alpha, 0, low_open=True)
        if not (isinstance(m_block_num, int) and (m_block_num == -1 or m_block_num >= 1)):
            raise PluginError(f"m_block_num must be a grid side >= 1 or -1 (2, 4, 8 or 16 drawn per step), "
                              f"got {m_block_num}")
        if not (isinstance(m_part, int) and m_part >= 2):
            raise PluginError(f"m_part must be an integer >= 2 (inputs mixed together), got {m_part}")
        for name, v in (("m_beta", m_beta), ("m_gamma", m_gamma), ("m_thres", m_thres), ("m_eta", m_eta)):
            check_range(name, v, 0)
        check_range("m_omega", m_omega, 0, 1)
        if m_thres_type not in THRES_TYPES:
            raise PluginError(f"m_thres_type must be one of {', '.join(THRES_TYPES)}, got {m_thres_type!r}")
        if not (isinstance(m_niter, int) and m_niter >= 1):
            raise PluginError(f"m_niter must be an integer >= 1, got {m_niter}")
        check_range("clean_lam", clean_lam, 0)
        if m_thres_form not in THRES_FORMS:
            raise PluginError(f"m_thres_form must be one of {', '.join(THRES_FORMS)}, got {m_thres_form!r}")
        self.m_thres_form = m_thres_form
        if criterion not in CRITERIA:
            raise PluginError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        self.alpha, self.m_block_num, self.m_part = float(alpha), m_block_num, m_part
        self.m_beta, self.m_gamma, self.m_thres, self.m_eta = m_beta, m_gamma, m_thres, m_eta
        self.m_thres_type, self.m_omega, self.set_resolve, self.m_niter = m_thres_type, m_omega, bool(set_resolve), m_niter
        self.clean_lam, self.criterion = float(clean_lam), criterion

    def sides(self, width: int) -> list[int]:
        """The grid sides a step may use: ``m_block_num``, or for -1 those of 2, 4, 8, 16 that fit the image."""
        return [s for s in (2, 4, 8, 16) if s <= width] if self.m_block_num == -1 else [self.m_block_num]

    def check_input(self, input_shape) -> None:
        """Square images at least as large as the block grid, and gco-wrapper installed (checked by
        ``validate``, so that it refuses what ``run`` would)."""
        super().check_input(input_shape)
        if not have_gco():
            raise PluginError('comixup needs the gco-wrapper package for its graph cuts: pip install '
                              '"mixcli[puzzlemix]" (it has no substitute solver)')
        h, w = int(input_shape[-2]), int(input_shape[-1])
        if h != w:
            raise PluginError(f"comixup needs square images, got {h}x{w}")
        sides = self.sides(w)
        if not sides or max(sides) > w:
            side = max(sides) if sides else 2
            raise PluginError(f"comixup m_block_num {self.m_block_num}: a {side}x{side} block grid needs images "
                              f"of at least {side}x{side} pixels, got {h}x{w}")

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "comixup")
        self.check_input(tuple(ctx.train.x.shape[1:]))

    def labeling(self, sal: torch.Tensor, rng, n: int) -> torch.Tensor:
        """The block labeling (B, n, n, B-partition inputs) as a list of per-partition masks, from the
        full-resolution saliency ``sal`` (B, H, W) on the host, drawing the Dirichlet prior and the
        initial labels of each partition from ``rng``."""
        b, _, width = sal.shape
        pooled = F.avg_pool2d(sal.unsqueeze(1), width // n).squeeze(1)
        a_dist = compat_matrix(sal)
        masks = []
        for lo in range(0, b, self.m_part):
            part = pooled[lo:lo + self.m_part]
            m = part.shape[0]
            if m == 1:  # a last partition of one row: nothing to mix it with, it stays itself
                masks.append(torch.ones(1, part.shape[1], part.shape[2], 1))
                continue
            cost = -(part / part.reshape(m, -1).sum(1).reshape(m, 1, 1))
            ad = a_dist[lo:lo + self.m_part, lo:lo + self.m_part]
            total = ad.sum()
            ad = ad / total * m if total > 0 else torch.zeros_like(ad)
            compat = (1 - self.m_omega) * torch.eye(m) + self.m_omega * ad
            hw = cost.shape[1] * cost.shape[2]
            prior = rng.dirichlet(self.alpha * np.ones(m))
            init = rng.integers(0, m, (m, cost.shape[2], cost.shape[1]))
            masks.append(comix_labeling(cost, compat, prior, init, self.m_beta / hw, self.m_gamma / hw,
                                        self.m_eta / hw, self.m_thres * hw, self.m_thres_type,
                                        self.set_resolve, self.m_niter, self.m_thres_form))
        return masks

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y = batch.x, batch.y
        b, k = x.shape[0], ctx.num_classes
        sides = self.sides(x.shape[-1])
        n = sides[int(ctx.rng.integers(len(sides)))] if self.m_block_num == -1 else self.m_block_num
        keep = self.clean_lam > 0
        sal, ce = gradient_saliency(model, x, y, train=keep, keep_graph=keep)
        masks = self.labeling(sal.detach().float().cpu(), ctx.rng, n)  # the one host synchronisation
        y1 = F.one_hot(y, k).float()
        outs, targets = [], []
        for i, mask in enumerate(masks):
            lo = i * self.m_part
            o, t = mix_input(to_device(mask.numpy(), x.device), x[lo:lo + mask.shape[-1]], y1[lo:lo + mask.shape[-1]])
            outs.append(o)
            targets.append(t)
        mixed, target = torch.cat(outs), torch.cat(targets)
        logits = model(mixed.contiguous())
        # the two largest label shares of each row, for a two-label view (train metrics); the loss uses all
        top = torch.topk(target, k=min(2, k), dim=1)
        ya, yb = top.indices[:, 0], top.indices[:, -1]
        lam = top.values[:, 0] / top.values.sum(1).clamp_min(1e-12)
        out = MixOutput(logits, ya, yb, lam.float())
        if self.criterion == "bce_softmax":
            loss = bce_of_softmax(logits, target)
            coef = 2 * self.clean_lam / k
        else:
            loss = -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()
            coef = 2 * self.clean_lam
        out.loss = loss + coef * ce if ce is not None else loss
        return out
