"""Mixup with dynamic bootstrapping guided by a beta mixture on the per-sample losses (M-DYR-H / M-DYR-S;
Arazo et al., ICML 2019), for training with noisy labels."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor,
                        to_device)

BOOTSTRAPS = ("hard", "soft")
SOFT_REG = ("reference", "num_classes")
EPS_NAN = 1e-12   # the reference BetaMixture1D's eps_nan (responsibility floor, lookup grid ends)
LOOKUP = 100      # the reference's lookup_resolution


# ----------------------------------------------------------------------------------- the beta mixture
def fit_beta_weighted(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted method of moments: ``m = sum w x / sum w``, ``s2 = sum w (x - m)^2 / sum w``,
    ``a = m (m (1 - m) / s2 - 1)``, ``b = a (1 - m) / m`` (the reference's M-step)."""
    m = np.sum(w * x) / np.sum(w)          # numpy float64 scalars (a Python float would make x - m float32)
    s2 = np.sum(w * (x - m) ** 2) / np.sum(w)
    a = m * ((m * (1 - m)) / s2 - 1)
    return float(a), float(a * (1 - m) / m)


class BetaMixture:
    """A two-component beta mixture on (0, 1), fitted by EM with a weighted method-of-moments M-step, and
    the lookup table of the posterior of component 1 (the high-loss, noisy one) that M-DYR reads.

    EM, from ``a = (1, 2)``, ``b = (2, 1)``, ``pi = (1/2, 1/2)`` (the reference's start), ``iters`` times:
    ``r_k(x) = pi_k Beta(x; a_k, b_k) / sum_j pi_j Beta(x; a_j, b_j)`` (each weighted density floored at
    1e-12 first), then ``a_k, b_k`` = :func:`fit_beta_weighted` ``(x, r_k)`` and ``pi_k = mean(r_k)``. The
    lookup: ``p(1 | x)`` on 100 equally spaced points of [1e-12, 1 - 1e-12], made non-decreasing after its
    maximum (``lookup[argmax:] = max``: a larger loss is never less likely to be noisy).
    """

    def __init__(self, iters: int = 10) -> None:
        self.iters = iters
        self.alphas = np.array([1.0, 2.0])
        self.betas = np.array([2.0, 1.0])
        self.weight = np.array([0.5, 0.5])
        self.lookup = np.zeros(LOOKUP)

    def weighted_likelihood(self, x: np.ndarray, k: int) -> np.ndarray:
        # scipy's density, as the reference: the moment-matching EM is ill-conditioned enough that a density
        # exact to 1e-15 but computed otherwise moves the fitted parameters by ~1e-7 after 10 iterations
        from scipy import stats
        return self.weight[k] * stats.beta.pdf(x, self.alphas[k], self.betas[k])

    def posterior(self, x: np.ndarray, k: int) -> np.ndarray:
        total = self.weighted_likelihood(x, 0) + self.weighted_likelihood(x, 1)
        return self.weighted_likelihood(x, k) / (total + EPS_NAN)

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        r = np.array([self.weighted_likelihood(x, k) for k in range(2)])
        r[r <= EPS_NAN] = EPS_NAN
        return r / r.sum(axis=0)

    def fit(self, x: np.ndarray) -> "BetaMixture":
        x = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))  # float32 losses stay float32
        x[x >= 1 - 1e-4] = 1 - 1e-4  # as the reference (scipy's density of float32 values differs from
        x[x <= 1e-4] = 1e-4          # that of the same values as float64 by ~1e-16, which EM amplifies)
        for _ in range(self.iters):
            r = self.responsibilities(x)
            for k in range(2):
                self.alphas[k], self.betas[k] = fit_beta_weighted(x, r[k])
            weight = r.sum(axis=1)
            self.weight = weight / weight.sum()
        grid = np.linspace(EPS_NAN, 1 - EPS_NAN, LOOKUP)
        lookup = self.posterior(grid, 1)
        lookup[np.argmax(lookup):] = lookup.max()
        self.lookup = lookup
        return self

    def state_dict(self) -> dict:
        return {k: torch.from_numpy(np.array(getattr(self, k), dtype=np.float64))
                for k in ("alphas", "betas", "weight", "lookup")}

    def load_state_dict(self, state: dict) -> None:
        for k in ("alphas", "betas", "weight", "lookup"):
            setattr(self, k, state[k].double().numpy().copy())


def normalise_losses(losses: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The reference's preparation of the per-sample losses for the fit: keep those between the 5th and the
    95th percentile, map ``(l - lo) / (hi - lo + 1e-6)`` with ``lo = p5 + 1e-5``, ``hi = p95`` (float32),
    clamp into [0.001, 0.999]. Returns the values and ``(lo, hi)``, which also normalise each batch."""
    losses = np.asarray(losses, dtype=np.float32)
    hi, lo = np.percentile(losses, 95), np.percentile(losses, 5)
    kept = losses[(losses <= hi) & (losses >= lo)]
    hi32 = np.float32(hi)
    lo32 = np.float32(np.float32(lo) + np.float32(10e-6))
    x = (kept - lo32) / (hi32 - lo32 + np.float32(1e-6))
    x[x >= 1] = 1 - 10e-4
    x[x <= 0] = 10e-4
    return x, float(lo32), float(hi32)


# ------------------------------------------------------------------------------------------- the method
class MDYR(Method):
    """M-DYR-H: mixup whose targets bootstrap on the model's own prediction, weighted per example by the
    probability that its label is noisy under a beta mixture fitted to the training losses.

    Arazo, Ortego, Albert, O'Connor, McGuinness, "Unsupervised Label Noise Modeling and Loss Correction",
    ICML 2019 (official code: PaulAlbert31/LabelNoiseCorrection, ``train.py`` / ``utils.py``).

    Before each epoch ``e >= bootstrap_from`` the per-sample cross-entropy ``l_i`` of every training
    example (model in eval mode, inputs augmented like a batch, as the reference's ``train_loader_track``)
    is normalised (:func:`normalise_losses`) and a two-component beta mixture is fitted to it
    (:class:`BetaMixture`); ``w_i = p(noisy | l_i)`` is read from its lookup table, clamped into
    [1e-4, 1 - 1e-4]. Each step: ``z = f(x)`` (train mode, no gradient), ``l`` of the batch in eval mode,
    ``w = lookup[floor(100 l~)]``; ``lam ~ Beta(alpha, alpha)`` (one per batch), ``j`` a permutation,
    ``x~ = lam x + (1 - lam) x_j``, ``h = log softmax f(x~)``, and

        hard:  L = lam [ (1 - w) CE(h, y) + w CE(h, argmax z) ] + (1 - lam) [ (1 - w_j) CE(h, y_j) + w_j CE(h, argmax z_j) ]
        soft:  the same with ``- sum_k softmax(z)_k h_k`` for ``CE(h, argmax z)`` (M-DYR-S)
        loss = mean_batch(L) + reg_term * sum_k (1/K) log((1/K) / mean_batch softmax(f(x~))_k)

    the last term (Tanaka et al., CVPR 2018) keeping the mean prediction near uniform. Before
    ``bootstrap_from`` the method is plain mixup with the same ``alpha`` (the reference: 105 epochs of mixup
    then bootstrapping, with milestones 100 and 250 of 300 epochs).

    Options (the reference's ``RunScripts.sh`` M-DYR-H values by default):

    - ``bootstrap`` (hard): ``hard`` (M-DYR-H) or ``soft`` (M-DYR-S).
    - ``alpha`` (32.0): the Beta parameter of mixup (both phases).
    - ``reg_term`` (1.0): the weight of the regulariser (the scripts' ``--reg-term 1.0``).
    - ``bootstrap_from`` (106): the first bootstrapped epoch (hard needs a mixture fitted after an epoch,
      so >= 2; soft takes w = 0.5 in epoch 1 as the reference). A run shorter than that is plain mixup
      throughout: set it for the run's length (the reference's is about a third of the epochs).
    - ``bmm_iters`` (10): EM iterations.
    - ``track_augment`` (true): the tracking pass sees augmented inputs (the reference); false: the
      training split as evaluated (no augmentation).
    - ``soft_reg`` (reference): the soft variant's regulariser, which the reference calls without the number
      of classes, so its prior is 1/10 whatever K (``reference``); ``num_classes`` uses 1/K (the paper's
      formula; equal for 10 classes).

    The fitted mixture (its parameters, lookup table, loss range and the epoch it was fitted for) is the
    method's state, kept in checkpoints.
    """

    family = "input"
    tasks = ("classification",)
    needs = ("class_labels", "train")
    paper = "Arazo et al., Unsupervised Label Noise Modeling and Loss Correction, ICML 2019"

    def __init__(self, bootstrap: str = "hard", alpha: float = 32.0, reg_term: float = 1.0,
                 bootstrap_from: int = 106, bmm_iters: int = 10, track_augment: bool = True,
                 soft_reg: str = "reference"):
        if bootstrap not in BOOTSTRAPS:
            raise PluginError(f"bootstrap must be hard (M-DYR-H) or soft (M-DYR-S), got {bootstrap!r}")
        if soft_reg not in SOFT_REG:
            raise PluginError(f"soft_reg must be reference or num_classes, got {soft_reg!r}")
        check_range("alpha", alpha, 0, low_open=True)
        check_range("reg_term", reg_term, 0)
        low = 2 if bootstrap == "hard" else 1
        if isinstance(bootstrap_from, bool) or not isinstance(bootstrap_from, int) or bootstrap_from < low:
            raise PluginError(f"bootstrap_from must be an integer >= {low} (the first bootstrapped epoch"
                              + ("; hard bootstrapping needs a mixture fitted after an epoch" if low == 2 else "")
                              + f"), got {bootstrap_from!r}")
        if isinstance(bmm_iters, bool) or not isinstance(bmm_iters, int) or bmm_iters < 1:
            raise PluginError(f"bmm_iters must be an integer >= 1, got {bmm_iters!r}")
        self.bootstrap, self.alpha, self.reg_term = bootstrap, float(alpha), float(reg_term)
        self.bootstrap_from, self.bmm_iters, self.track_augment = bootstrap_from, bmm_iters, track_augment
        self.soft_reg = soft_reg
        self.bmm: BetaMixture | None = None
        self.loss_lo = self.loss_hi = 0.0
        self.fitted_for = 0   # the epoch the mixture was fitted for (0: none)
        self._lookup: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ per epoch
    def start_epoch(self, epoch: int, ctx: Context) -> None:
        if epoch < self.bootstrap_from or epoch < 2 or self.fitted_for == epoch:
            return
        losses = self.track_losses(ctx.model, ctx)
        x, self.loss_lo, self.loss_hi = normalise_losses(losses)
        self.bmm = BetaMixture(self.bmm_iters).fit(x)
        self.fitted_for = epoch
        self._lookup = None

    @torch.no_grad()
    def track_losses(self, model: Model, ctx: Context, chunk: int = 512) -> np.ndarray:
        """The cross-entropy of every training example under the model in eval mode (float32, host)."""
        modes = [m.training for m in model.modules()]
        model.eval()
        out = []
        try:
            if self.track_augment:
                n = len(ctx.train)
                for i in range(0, n, chunk):
                    x, y = ctx.fetch(torch.arange(i, min(i + chunk, n), device=ctx.device))
                    out.append(F.cross_entropy(model(x).float(), y, reduction="none"))
            else:
                for x, y in ctx.eval_batches("train", chunk):
                    out.append(F.cross_entropy(model(x).float(), y, reduction="none"))
        finally:
            for m, t in zip(model.modules(), modes):
                m.training = t
        return torch.cat(out).cpu().numpy()  # one host sync per epoch (the mixture is fitted on the host)

    # ------------------------------------------------------------------------------ per step
    def noise_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """``w = lookup[int(100 l~)]`` of per-sample losses, ``l~`` normalised by the fitted loss range and
        clamped into [0.001, 0.999]; then clamped into [1e-4, 1 - 1e-4]. On the device, no host sync."""
        if self.bmm is None:
            return torch.full_like(losses, 0.5)
        if self._lookup is None or self._lookup.device != losses.device:  # once per fit: no per-step copies
            self._lookup = to_device(self.bmm.lookup, losses.device, np.float64)
            self._range = to_device([self.loss_lo, self.loss_hi], losses.device, np.float32)
        lo, hi = self._range[0], self._range[1]
        x = (losses.float() - lo) / (hi - lo + 1e-6)
        x = torch.where(x >= 1, torch.full_like(x, 1 - 10e-4), x)
        x = torch.where(x <= 0, torch.full_like(x, 10e-4), x)
        idx = (LOOKUP * x).long().clamp(0, LOOKUP - 1)  # float32 product truncated, as numpy's astype(int)
        return self._lookup[idx].float().clamp(1e-4, 1 - 1e-4)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        boot = ctx.epoch >= self.bootstrap_from
        if boot:
            with torch.no_grad():
                z = model(x).detach().float()          # train mode, as the reference's output_x1
                modes = [m.training for m in model.modules()]
                model.eval()                           # the reference's compute_probabilities_batch
                try:
                    l_eval = F.cross_entropy(model(x).float(), y, reduction="none")
                finally:
                    for m, t in zip(model.modules(), modes):
                        m.training = t
                w = self.noise_weights(l_eval)
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        perm = to_device(ctx.rng.permutation(n), x.device)
        mixed = lam * x + (1 - lam) * x[perm]
        logits = model(mixed)
        lam_t = lam_tensor(lam, n, x.device)
        if not boot:
            return MixOutput(logits, y, y[perm], lam_t)
        loss = bootstrap_loss(logits, y, perm, lam, w, z, self.bootstrap, self.reg_term, ctx.num_classes,
                              10 if self.soft_reg == "reference" and self.bootstrap == "soft" else None)
        return MixOutput(logits, y, y[perm], lam_t, loss=loss)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        if self.bmm is None:
            return {"fitted_for": 0}
        return {"fitted_for": self.fitted_for, "bmm": self.bmm.state_dict(),
                "loss_range": torch.tensor([self.loss_lo, self.loss_hi], dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.fitted_for = int(state.get("fitted_for", 0))
        if "bmm" in state:
            self.bmm = BetaMixture(self.bmm_iters)
            self.bmm.load_state_dict(state["bmm"])
            self.loss_lo, self.loss_hi = (float(v) for v in state["loss_range"])
        else:
            self.bmm = None
        self._lookup = None


def bootstrap_loss(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float, w: torch.Tensor,
                   z: torch.Tensor, kind: str, reg_term: float, num_classes: int,
                   prior_classes: int | None = None) -> torch.Tensor:
    """The M-DYR loss of one batch (see :class:`MDYR`): ``logits`` of the mixed batch, ``z`` the logits of
    the unmixed one, ``w`` the noise probabilities; ``prior_classes`` the K of the regulariser's 1/K prior
    (None: ``num_classes``)."""
    h = F.log_softmax(logits.float(), dim=1)
    w2, y2 = w[perm], y[perm]
    nll = lambda t: F.nll_loss(h, t, reduction="none")  # noqa: E731
    if kind == "hard":
        target1, target2 = nll(z.argmax(1)), nll(z[perm].argmax(1))
    else:
        target1 = -(F.softmax(z, dim=1) * h).sum(1)
        target2 = -(F.softmax(z[perm], dim=1) * h).sum(1)
    loss = (lam * ((1 - w) * nll(y) + w * target1) + (1 - lam) * ((1 - w2) * nll(y2) + w2 * target2)).mean()
    k = prior_classes or num_classes
    mean_p = F.softmax(logits.float(), dim=1).mean(0)
    reg = ((1.0 / k) * torch.log((1.0 / k) / mean_p)).sum()
    return loss + reg_term * reg
