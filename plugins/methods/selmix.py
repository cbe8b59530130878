"""SelMix: selective mixup fine-tuning for non-decomposable objectives (Ramasubramanian et al., ICLR 2024).

Ramasubramanian, Rangwani, Takemori, Samanta, Umeda, Babu, "Selective Mixup Fine-Tuning for Optimizing
Non-Decomposable Objectives", ICLR 2024 (arXiv 2403.18301).

A pre-trained model (features ``g``, linear classifier ``W``) is fine-tuned on feature-level mixups whose class
pairs ``(i, j)`` are drawn from ``P = softmax(G / T)``, where ``G_ij`` is the first-order gain in the
objective ``psi`` from one SGD step on an (i, j) mixup. Every ``refresh`` iterations, on the balanced
validation split in eval mode:

1. ``C`` = jointly normalised confusion matrix (clipped to >= 1e-7), ``pi_q = sum_j C_qj``,
   ``R_q = C_qq / pi_q``, ``cov_j = sum_q C_qj``; class prototypes ``mu_k`` = mean feature of class k.
2. Multipliers (B.4): min recall ``lam <- normalize(lam^beta exp(-eta R))`` (``beta = 0``: softmin(eta R));
   min head-tail recall the same on the (head, tail) mean recalls, each class weighted lam_group / |group|;
   coverage ``lam_j = max(lam_max (1 - exp((cov_j - alpha/K) / tau)), 0)``.
3. ``D[q, l] = d psi / d A_ql``, the objective's rate of change with logit ``l`` at prototype ``q``, for the
   soft confusion ``C_ql = pi_q softmax_l(A_q)``:  ``D_ql = M_ql C_ql - (C_ql / pi_q) sum_j M_qj C_qj`` with
   ``M = d psi / d C``. Through ``psi(R)``: ``M_qj = w_q (delta_qj / pi_q - C_qq / pi_q^2)`` with ``w = d psi /
   d R``: mean recall ``1/K``; min recall ``lam``; min HT recall ``lam_g / |g|``; G-mean ``psi / (K R)``;
   H-mean ``psi^2 / (K R^2)``; mean recall s.t. coverage adds ``lam_j`` to ``M_qj`` and divides ``D`` by
   ``max lam + 1``. (On a balanced validation set ``pi_q = 1/K`` and this is the paper's ``D``, e.g. mean
   recall ``D_qq = C_qq - K C_qq^2``, ``D_ql = -K C_qq C_ql``.)
4. Gain (vectorised, O(K^3 + K^2 d)) with ``z_ij = lbar mu_i + (1 - lbar) mu_j``, ``lbar = (lam_min + 1)/2``,
   ``p_ij = softmax(W z_ij + b)``:
   ``G_ij = sum_q <z_ij, mu_q> (D[q, i] - <D[q, :], p_ij>)``.
5. ``P = softmax(G / T)`` over all K^2 pairs with pairs of gain <= 0 set to 0 and renormalised (uniform over
   all pairs if no gain is positive).

Each iteration draws one pair ``(i, j) ~ P`` per batch row, then a training example of class i and one of
class j (uniformly within the class; augmented like a batch), mixes their features just before the
classifier, ``z = lam g(x1) + (1 - lam) g(x2)`` with ``lam ~ U[lam_min, 1]`` per sample, and trains on the
first example's label ``y1`` only (``MixOutput`` with ``y_b = y_a``, ``lam = 1``). The engine's own batch is
used only for its size.

Defaults are the paper's (CIFAR-10 configs): ``temperature`` (DistTemp) 0.1, ``lam_min`` 0.6, ``refresh``
50, ``lagrange_lr`` (eta_v) 50, ``beta`` 0, ``coverage_alpha`` 0.95, ``coverage_tau`` 0.1, ``lambda_max``
100, ``head_fraction`` 0.9 (head = most frequent classes of the training set). The fine-tuning recipe
(backbone lr = classifier lr / 10, frozen BatchNorm, 10k iterations, batch 64) is set in the experiment's
``train:`` (``optimizer.classifier_lr``, ``freeze_bn``, ``iterations``).

Two protocols. ``protocol: paper`` (the method's default) is the algorithm above as the paper writes it.
``protocol: reference`` (the default of the SelMix experiment files) is the reference code's procedure
(``val-iisc/SelMix``: ``MetricOptimisation/``, ``dataloaders/sampler.py``, ``trainMetricOpt.py``,
``train_utils.get_finetune_SGD``); it differs in:

- the pair distribution: ``P = softmax(G / T)`` masked to positive gains, then ``(P + 1e-8)`` renormalised,
  and the joint sampler adds ``eps = 1/K^3`` to every pair, so the pairs are drawn from
  ``(P + eps) / (1 + 1/K)``: a mixture with ``1/(K + 1)`` uniform mass (9.1% at K = 10). The paper's
  protocol samples only pairs of positive gain;
- the gain's feature term: the reference's logit-change rate uses the class mean of i, ``<mu_i, mu_q>``,
  where the positive term of the paper's gain has the mixed centroid ``<z_ij, mu_q>``::

      G_ref_ij = sum_q <mu_i, mu_q> D[q, i] - sum_q <z_ij, mu_q> <D[q, :], p_ij>

  and its min-recall, min-HT-recall and coverage optimisers build ``z_ij`` with their own default
  ``lambda_min`` 0.8 (lbar = 0.9) while training mixes with ``lam_min`` (0.6);
- BatchNorm: the reference fine-tunes in train mode, so BatchNorm normalises with the batch statistics,
  with its running statistics frozen (momentum 0) and its affine parameters not trained. With this protocol
  the method sets every BatchNorm's momentum to 0 and stops its affine parameters' gradients; the run must
  keep ``train.freeze_bn: false`` (the paper protocol's recipe, ``freeze_bn: true``, keeps BatchNorm in eval
  mode instead);
- momentum: the reference builds plain SGD (no momentum) although its configs list 0.9; set
  ``train.optimizer.momentum: 0`` (the experiment files do).

Measured on long-tailed digits (``experiments/selmix_digits_lt_protocols.yaml``: min recall, 1000
iterations from the mixup pre-training, 3 seeds, test metrics at the final epoch, paired by seed, mean
difference +- standard error): reference minus paper protocol (each with its recipe): worst-class recall
-8.70 +- 3.04 points (worse on 3/3 seeds, p = 0.10), mean recall -0.20 +- 0.48, accuracy -0.19 +- 0.46. Of
that, the momentum alone (reference protocol with momentum 0.9 minus 0): worst-class recall +4.74 +- 1.92
(3/3 seeds), mean recall -3.23 +- 0.53 (p = 0.03); the other differences together (reference with momentum
0.9 minus paper): worst-class recall -3.97 +- 1.14, mean recall -3.43 +- 0.10 (p < 0.001). Three seeds do
not separate the BatchNorm, smoothing and gain-term differences from each other; they were not measured
one by one (the shared 2-core CPU did not allow it).

Not implemented in either protocol: the early stop on flat maximum gains (training runs for the
configured iterations), and the reference's gain refresh every 5 iterations (``refresh`` sets it).

At every refresh the method writes ``OUT/jobs/<run_id>/selmix/gains_<step>.npz`` (``G``, ``P``, ``C``,
``recall``, ``weights``, ``multipliers``, ``objective``, ``step``); ``mixcli selmix-gains RUN_DIR --png F``
shows them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, lam_tensor, write_artifact

OBJECTIVES = ("mean_recall", "min_recall", "min_ht_recall", "gmean", "hmean", "mean_recall_min_coverage")
PROTOCOLS = ("paper", "reference")
CLIP = 1e-7
REFERENCE_FLOOR = 1e-8  # the reference's floor on every pair probability before renormalising
REFERENCE_GAIN_LAM_MIN = {"min_recall": 0.8, "min_ht_recall": 0.8, "mean_recall_min_coverage": 0.8}


# ------------------------------------------------------------------------------------------ objectives
def recalls(C: np.ndarray) -> np.ndarray:
    return np.diag(C) / C.sum(1)


def head_mask(class_counts, head_fraction: float = 0.9) -> np.ndarray:
    """Boolean (K,): the ``ceil(head_fraction * K)`` most frequent classes (ties by index), clamped to [1, K-1]."""
    counts = np.asarray(class_counts, dtype=np.float64)
    k = len(counts)
    h = min(max(math.ceil(head_fraction * k - 1e-9), 1), k - 1)
    mask = np.zeros(k, dtype=bool)
    mask[np.argsort(-counts, kind="stable")[:h]] = True
    return mask


def objective_value(C: np.ndarray, objective: str, head: np.ndarray | None = None) -> float:
    """``psi(C)``; ``mean_recall_min_coverage`` is mean recall (its constraint is ``min cov >= alpha/K``)."""
    r = recalls(C)
    if objective in ("mean_recall", "mean_recall_min_coverage"):
        return float(r.mean())
    if objective == "min_recall":
        return float(r.min())
    if objective == "min_ht_recall":
        return float(min(r[head].mean(), r[~head].mean()))
    if objective == "gmean":
        return float(np.exp(np.log(r).mean()))
    if objective == "hmean":
        return float(len(r) / (1.0 / r).sum())
    raise ValueError(objective)


def next_multipliers(prev: np.ndarray, r: np.ndarray, eta: float, beta: float) -> np.ndarray:
    """B.4 update of min-recall style multipliers: ``lam <- lam^beta exp(-eta r)``, normalised (``beta = 0``:
    ``softmin(eta r)``). ``r`` holds the per-class (or per-group) recalls."""
    m = prev ** beta * np.exp(-eta * (r - r.min()))  # the shift cancels in the normalisation
    return m / m.sum()


def coverage_multipliers(C: np.ndarray, alpha: float, tau: float, lambda_max: float) -> np.ndarray:
    k = C.shape[0]
    return np.maximum(lambda_max * (1.0 - np.exp((C.sum(0) - alpha / k) / tau)), 0.0)


def recall_weights(C: np.ndarray, objective: str, mult: np.ndarray | None = None,
                   head: np.ndarray | None = None) -> np.ndarray:
    """``w = d psi / d R`` with the multipliers held fixed (``mult``: K class weights for min recall, the two
    (head, tail) weights for min head-tail recall)."""
    r, k = recalls(C), C.shape[0]
    if objective in ("mean_recall", "mean_recall_min_coverage"):
        return np.full(k, 1.0 / k)
    if objective == "min_recall":
        return np.asarray(mult, dtype=np.float64)
    if objective == "min_ht_recall":
        return np.where(head, mult[0] / head.sum(), mult[1] / (~head).sum())
    psi = objective_value(C, objective)
    if objective == "gmean":
        return psi / (k * r)
    return psi ** 2 / (k * r ** 2)  # hmean


def gain_rates(C: np.ndarray, w: np.ndarray, cov_mult: np.ndarray | None = None) -> np.ndarray:
    """``D[q, l] = d psi / d A_ql`` (see the module docstring) from ``w = d psi / d R`` and, for the
    coverage objective, the coverage multipliers."""
    pi = C.sum(1)
    d = np.diag(C)
    M = np.diag(w / pi) - (w * d / pi ** 2)[:, None]
    if cov_mult is not None:
        M = M + cov_mult[None, :]
    MC = M * C
    D = MC - (C / pi[:, None]) * MC.sum(1, keepdims=True)
    if cov_mult is not None:
        D = D / (cov_mult.max() + 1.0)
    return D


def gain_matrix(mu: np.ndarray, logits_mu: np.ndarray, D: np.ndarray, lbar: float,
                class_mean_term: bool = False) -> np.ndarray:
    """``G_ij = sum_q <z_ij, mu_q> (D[q, i] - <D[q, :], p_ij>)`` for an affine classifier, where
    ``logits_mu`` (K, K) are the classifier's logits at the prototypes ``mu`` (K, d), so the logits at
    ``z_ij`` are ``lbar a_i + (1 - lbar) a_j``. With ``H = (mu mu^T) D``:
    ``G_ij = lbar H_ii + (1 - lbar) H_ji - sum_l p_ijl (lbar H_il + (1 - lbar) H_jl)``.
    ``class_mean_term``: the reference's positive term ``sum_q <mu_i, mu_q> D[q, i] = H_ii`` instead."""
    H = (mu @ mu.T) @ D
    z = lbar * logits_mu[:, None, :] + (1 - lbar) * logits_mu[None, :, :]
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    mixed_h = lbar * H[:, None, :] + (1 - lbar) * H[None, :, :]
    if class_mean_term:
        return np.diag(H)[:, None] - (p * mixed_h).sum(-1)
    return lbar * np.diag(H)[:, None] + (1 - lbar) * H.T - (p * mixed_h).sum(-1)


def pair_distribution(G: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(G / T)`` over all pairs, pairs with ``G <= 0`` set to 0 (uniform if none is positive)."""
    pos = G > 0
    if not pos.any():
        return np.full(G.shape, 1.0 / G.size)
    s = np.where(pos, G / temperature, -np.inf)
    e = np.exp(s - s[pos].max())
    return e / e.sum()


def reference_pair_distribution(G: np.ndarray, temperature: float) -> np.ndarray:
    """The pair distribution the reference code samples from: ``P1 = softmax(G / T)`` over all pairs times
    the mask ``G > 0``, ``P2 = (P1 + 1e-8) / sum(P1 + 1e-8)``, then its joint sampler's smoothing
    ``(P2 + eps) / sum(P2 + eps)`` with ``eps = 1 / K^3`` (``K^2`` pairs: ``1/(K + 1)`` uniform mass)."""
    k = G.shape[0]
    z = G / temperature
    e = np.exp(z - z.max())
    p = e / e.sum() * (G > 0)
    p = (p + REFERENCE_FLOOR) / (p + REFERENCE_FLOOR).sum()
    eps = 1.0 / k ** 3
    return (p + eps) / (p + eps).sum()


def sample_pairs(P: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class pairs ``(i, j) ~ P`` (inverse CDF; pairs of probability 0 are never drawn)."""
    cdf = np.cumsum(P.ravel())
    cdf /= cdf[-1]
    flat = np.searchsorted(cdf, rng.random(n), side="right")
    k = P.shape[1]
    return flat // k, flat % k


# ---------------------------------------------------------------------------------------------- method
class SelMix(Method):
    """SelMix: fine-tune with feature mixups of class pairs sampled by their gain in a non-decomposable metric.

    Ramasubramanian et al., "Selective Mixup Fine-Tuning for Optimizing Non-Decomposable Objectives",
    ICLR 2024. See the module docstring for the algorithm, its formulas and defaults.
    """

    family = "feature"
    tasks = ("classification",)
    paper = "Ramasubramanian et al., Selective Mixup Fine-Tuning for Non-Decomposable Objectives, ICLR 2024"
    needs = ("train", "val", "class_labels", "stages")

    def __init__(self, objective: str = "mean_recall", refresh: int = 50, temperature: float = 0.1,
                 lam_min: float = 0.6, lagrange_lr: float = 50.0, beta: float = 0.0,
                 coverage_alpha: float = 0.95, coverage_tau: float = 0.1, lambda_max: float = 100.0,
                 head_fraction: float = 0.9, save_gains: bool = True, protocol: str = "paper"):
        if protocol not in PROTOCOLS:
            raise PluginError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        if objective not in OBJECTIVES:
            raise PluginError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if not isinstance(refresh, int) or isinstance(refresh, bool) or refresh < 1:
            raise PluginError(f"refresh (iterations between gain updates) must be an integer >= 1, got {refresh!r}")
        for name, v in (("temperature", temperature), ("lagrange_lr", lagrange_lr), ("coverage_tau", coverage_tau),
                        ("lambda_max", lambda_max)):
            if not v > 0:
                raise PluginError(f"{name} must be > 0, got {v}")
        if not 0 <= lam_min <= 1:
            raise PluginError(f"lam_min (lambda ~ U[lam_min, 1]) must be in [0, 1], got {lam_min}")
        if beta < 0:
            raise PluginError(f"beta (multiplier memory) must be >= 0, got {beta}")
        if not 0 < coverage_alpha <= 1:
            raise PluginError(f"coverage_alpha must be in (0, 1], got {coverage_alpha}")
        if not 0 < head_fraction < 1:
            raise PluginError(f"head_fraction must be in (0, 1), got {head_fraction}")
        self.objective, self.refresh, self.temperature, self.lam_min = objective, refresh, temperature, lam_min
        self.eta, self.beta, self.alpha, self.tau, self.lambda_max = lagrange_lr, beta, coverage_alpha, \
            coverage_tau, lambda_max
        self.head_fraction, self.save_gains = head_fraction, save_gains
        self.P: np.ndarray | None = None
        self.mult: np.ndarray | None = None

    # --------------------------------------------------------------------------------------------- setup
    def setup(self, ctx: Context) -> None:
        data, model = ctx.data, ctx.model
        if data is None or data.val is None or len(data.val) == 0:
            raise PluginError("selmix needs a (balanced) validation split to estimate the gains; this dataset "
                              "has none (e.g. give the dataset a val_size > 0)")
        if ctx.eval_batches is None:
            raise PluginError("selmix needs ctx.eval_batches (the engine provides it)")
        if not isinstance(model.classifier, nn.Linear):
            raise PluginError("selmix needs a linear classifier (model.classifier an nn.Linear); the gain "
                              f"is derived for logits W g(x) + b, got {type(model.classifier).__name__}")
        k = ctx.num_classes
        y = ctx.train.y.cpu().numpy()
        counts = np.bincount(y, minlength=k)
        missing = [c for c in range(k) if counts[c] == 0 or not bool((data.val.y == c).any())]
        if missing:
            raise PluginError(f"selmix needs every class in the training and validation splits; classes "
                              f"{missing[:10]} are missing from one of them")
        self.k = k
        self.order = np.argsort(y, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        self.head = head_mask(counts, self.head_fraction)
        if self.protocol == "reference":  # BatchNorm on batch statistics, running statistics and affine frozen
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = 0.0
                    for p in m.parameters(recurse=False):
                        p.requires_grad_(False)
                        p.grad = None
        if self.mult is None:  # multipliers start uniform
            m = 2 if self.objective == "min_ht_recall" else k
            self.mult = np.full(m, 1.0 / m)

    def state_dict(self) -> dict:
        out = {"mult": torch.as_tensor(self.mult)}
        if self.P is not None:
            out["P"] = torch.as_tensor(self.P)
        return out

    def load_state_dict(self, state: dict) -> None:
        self.mult = state["mult"].numpy()
        self.P = state["P"].numpy() if "P" in state else None

    # ------------------------------------------------------------------------------------------- gains
    @torch.no_grad()
    def statistics(self, model: Model, ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validation confusion matrix (clipped), class prototypes and the classifier's logits at them
        (eval mode, float32; the modules' training flags are restored afterwards)."""
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        pos, k = model.embed_position, self.k
        sums, cm = None, torch.zeros(k * k, device=ctx.device, dtype=torch.float64)
        try:
            with torch.autocast(device_type=ctx.device.type, enabled=False):
                for x, y in ctx.eval_batches("val", 1024):
                    h = model.forward_to(x, pos).float()
                    pred = model.forward_from(h, pos).argmax(1)
                    s = torch.zeros(k, h.shape[1], device=h.device, dtype=torch.float64)
                    s.index_add_(0, y, h.double())
                    sums = s if sums is None else sums + s
                    cm += torch.bincount(y * k + pred, minlength=k * k).double()
                mu = sums / cm.view(k, k).sum(1, keepdim=True)  # row sums = examples per class
                logits_mu = model.classifier(mu.float()).double()
        finally:
            for m, t in modes:
                m.training = t
        C = (cm.view(k, k) / cm.sum()).cpu().numpy()
        return np.maximum(C, CLIP), mu.cpu().numpy(), logits_mu.cpu().numpy()

    def update_gains(self, model: Model, ctx: Context) -> dict:
        C, mu, logits_mu = self.statistics(model, ctx)
        r = recalls(C)
        cov_mult = None
        if self.objective == "min_recall":
            self.mult = next_multipliers(self.mult, r, self.eta, self.beta)
        elif self.objective == "min_ht_recall":
            g = np.array([r[self.head].mean(), r[~self.head].mean()])
            self.mult = next_multipliers(self.mult, g, self.eta, self.beta)
        elif self.objective == "mean_recall_min_coverage":
            cov_mult = coverage_multipliers(C, self.alpha, self.tau, self.lambda_max)
        w = recall_weights(C, self.objective, self.mult, self.head)
        D = gain_rates(C, w, cov_mult)
        if self.protocol == "reference":
            lbar = (REFERENCE_GAIN_LAM_MIN.get(self.objective, self.lam_min) + 1.0) / 2.0
            G = gain_matrix(mu, logits_mu, D, lbar, class_mean_term=True)
            self.P = reference_pair_distribution(G, self.temperature)
        else:
            G = gain_matrix(mu, logits_mu, D, (self.lam_min + 1.0) / 2.0)
            self.P = pair_distribution(G, self.temperature)
        record = {"G": G, "P": self.P, "C": C, "recall": r, "weights": w,
                  "multipliers": cov_mult if cov_mult is not None else self.mult
                  if self.objective in ("min_recall", "min_ht_recall") else np.zeros(0),
                  "objective": objective_value(C, self.objective, self.head), "step": ctx.step,
                  "epoch": ctx.epoch}
        if self.save_gains and ctx.artifacts_dir is not None:
            write_artifact(ctx.artifacts_dir, f"selmix/gains_{ctx.step:07d}.npz",
                           lambda f: np.savez(f, **{k: np.asarray(v) for k, v in record.items()}))
        return record

    # -------------------------------------------------------------------------------------------- step
    def draw_examples(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One training example of each given class, uniformly within the class."""
        offset = np.floor(rng.random(len(classes)) * self.counts[classes]).astype(np.int64)
        return self.order[self.starts[classes] + offset]

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        if self.protocol == "reference" and self.P is None and model.training and any(
                not m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            raise PluginError("selmix protocol: reference trains BatchNorm on batch statistics (as the reference "
                              "code); set train.freeze_bn: false")
        if self.P is None or ctx.step % self.refresh == 0:
            self.update_gains(model, ctx)
        n = batch.y.shape[0]
        i, j = sample_pairs(self.P, n, ctx.rng)
        idx = np.concatenate([self.draw_examples(i, ctx.rng), self.draw_examples(j, ctx.rng)])
        x, y = ctx.fetch(torch.from_numpy(idx).to(ctx.device, non_blocking=True))
        lam = lam_tensor(ctx.rng.uniform(self.lam_min, 1.0, n), n, ctx.device)
        pos = model.embed_position
        h = model.forward_to(x, pos)
        lam_h = lam.view(-1, *([1] * (h.dim() - 1))).to(h.dtype)
        z = lam_h * h[:n] + (1 - lam_h) * h[n:]
        y1 = y[:n]
        return MixOutput(model.forward_from(z, pos), y1, y1, torch.ones(n, device=ctx.device))


    @classmethod
    def inspect(cls, run_dir, png=None, step=None, top=10):
        """The gain matrix G and pair distribution P recorded at a refresh: the ``top`` most likely pairs as a
        table, and heat maps of G and P with ``png`` (``mixcli inspect OUT/jobs/<run_id>``)."""
        from rich.table import Table

        rec = load_gains(run_dir, step)
        G, P = rec["G"], rec["P"]
        k = G.shape[0]
        t = Table(title=f"{run_dir} · step {int(rec['step'])} · objective on val {float(rec['objective']):.4f} · "
                        f"{int((G > 0).sum())}/{k * k} pairs with positive gain")
        for col in ("i (label)", "j (partner)", "P_ij", "G_ij", "val recall of i"):
            t.add_column(col, justify="right")
        for f in np.argsort(-P.ravel(), kind="stable")[:top]:
            i, j = divmod(int(f), k)
            t.add_row(str(i), str(j), f"{P[i, j]:.4f}", f"{G[i, j]:.4g}", f"{rec['recall'][i]:.3f}")
        if png is not None:
            plot_gains(rec, png)
        return t


# ------------------------------------------------------------------------------------------ inspection
def load_gains(run_dir: str | Path, step: int | None = None) -> dict:
    """The gains recorded at ``step`` (default: the last refresh) of a selmix run directory."""
    d = Path(run_dir) / "selmix"
    files = sorted(d.glob("gains_*.npz")) if d.is_dir() else []
    if not files:
        raise PluginError(f"{run_dir}: no selmix gains recorded (expected {d}/gains_<step>.npz; is this the "
                          "directory OUT/jobs/<run_id> of a selmix run?)")
    if step is None:
        path = files[-1]
    else:
        path = d / f"gains_{step:07d}.npz"
        if not path.is_file():
            steps = [int(f.stem.split("_")[1]) for f in files]
            raise PluginError(f"{run_dir}: no gains at step {step}; recorded steps: {steps[:5]} ... {steps[-5:]}")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def plot_gains(record: dict, png: str | Path, class_names: list[str] | None = None) -> None:
    """Heat maps of the gain matrix G and the pair distribution P (rows: class i of y1, columns: partner j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G, P = record["G"], record["P"]
    k = G.shape[0]
    names = class_names or [str(c) for c in range(k)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    lim = float(np.abs(G).max()) or 1.0
    for ax, mat, title, kw in ((axes[0], G, "gain G_ij", {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}),
                               (axes[1], P, "pair distribution P_ij", {"cmap": "viridis", "vmin": 0})):
        im = ax.imshow(mat, **kw)
        ax.set_title(title)
        ax.set_xlabel("j (partner class)")
        ax.set_ylabel("i (label class)")
        if k <= 20:
            ax.set_xticks(range(k), names, fontsize=7)
            ax.set_yticks(range(k), names, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"SelMix at step {int(record['step'])}: objective on val = {float(record['objective']):.4f}")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
