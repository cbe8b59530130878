"""mdyr (M-DYR-H / M-DYR-S, Arazo et al. ICML 2019) against ports of the official code
(PaulAlbert31/LabelNoiseCorrection, utils.py): the beta mixture's fit, the loss normalisation and lookup,
the hard and soft bootstrapping losses on the same draws; resume exact; validation; a run on digits."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats as stats
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, Split
from mixcli_plugins.methods.mdyr import MDYR, BetaMixture, bootstrap_loss, normalise_losses
from resume_helpers import full_and_resumed


# ------------------------------------------------------------------------- ports of the reference code
def weighted_mean(x, w):
    return np.sum(w * x) / np.sum(w)


def fit_beta_weighted(x, w):
    x_bar = weighted_mean(x, w)
    s2 = weighted_mean((x - x_bar) ** 2, w)
    alpha = x_bar * ((x_bar * (1 - x_bar)) / s2 - 1)
    beta = alpha * (1 - x_bar) / x_bar
    return alpha, beta


class RefBetaMixture1D:
    """utils.BetaMixture1D (scipy's beta density)."""

    def __init__(self, max_iters=10):
        self.alphas = np.array([1, 2], dtype=np.float64)
        self.betas = np.array([2, 1], dtype=np.float64)
        self.weight = np.array([0.5, 0.5], dtype=np.float64)
        self.max_iters = max_iters
        self.lookup = np.zeros(100, dtype=np.float64)
        self.lookup_resolution = 100
        self.eps_nan = 1e-12

    def likelihood(self, x, y):
        return stats.beta.pdf(x, self.alphas[y], self.betas[y])

    def weighted_likelihood(self, x, y):
        return self.weight[y] * self.likelihood(x, y)

    def probability(self, x):
        return sum(self.weighted_likelihood(x, y) for y in range(2))

    def posterior(self, x, y):
        return self.weighted_likelihood(x, y) / (self.probability(x) + self.eps_nan)

    def responsibilities(self, x):
        r = np.array([self.weighted_likelihood(x, i) for i in range(2)])
        r[r <= self.eps_nan] = self.eps_nan
        r /= r.sum(axis=0)
        return r

    def fit(self, x):
        x = np.copy(x)
        eps = 1e-4
        x[x >= 1 - eps] = 1 - eps
        x[x <= eps] = eps
        for _ in range(self.max_iters):
            r = self.responsibilities(x)
            self.alphas[0], self.betas[0] = fit_beta_weighted(x, r[0])
            self.alphas[1], self.betas[1] = fit_beta_weighted(x, r[1])
            self.weight = r.sum(axis=1)
            self.weight /= self.weight.sum()
        return self

    def create_lookup(self, y):
        x_l = np.linspace(0 + self.eps_nan, 1 - self.eps_nan, self.lookup_resolution)
        lookup_t = self.posterior(x_l, y)
        lookup_t[np.argmax(lookup_t):] = lookup_t.max()
        self.lookup = lookup_t

    def look_lookup(self, x):
        x_i = x.clone().cpu().numpy()
        x_i = np.array((self.lookup_resolution * x_i).astype(int))
        x_i[x_i < 0] = 0
        x_i[x_i == self.lookup_resolution] = self.lookup_resolution - 1
        return self.lookup[x_i]


def ref_track(loss_tr):
    """track_training_loss's outlier filtering and normalisation, then the fit and the lookup."""
    max_perc = np.percentile(loss_tr, 95)
    min_perc = np.percentile(loss_tr, 5)
    loss_tr = loss_tr[(loss_tr <= max_perc) & (loss_tr >= min_perc)]
    bmm_max = torch.FloatTensor([max_perc])
    bmm_min = torch.FloatTensor([min_perc]) + 10e-6
    loss_tr = (loss_tr - bmm_min.numpy()) / (bmm_max.numpy() - bmm_min.numpy() + 1e-6)
    loss_tr[loss_tr >= 1] = 1 - 10e-4
    loss_tr[loss_tr <= 0] = 10e-4
    bmm = RefBetaMixture1D(max_iters=10)
    bmm.fit(loss_tr)
    bmm.create_lookup(1)
    return loss_tr, bmm, bmm_max, bmm_min


def ref_probabilities(batch_losses, bmm, bmm_max, bmm_min):
    """compute_probabilities_batch after the model's forward pass."""
    batch_losses = (batch_losses - bmm_min) / (bmm_max - bmm_min + 1e-6)
    batch_losses[batch_losses >= 1] = 1 - 10e-4
    batch_losses[batch_losses <= 0] = 10e-4
    B = torch.FloatTensor(bmm.look_lookup(batch_losses))
    B[B <= 1e-4] = 1e-4
    B[B >= 1 - 1e-4] = 1 - 1e-4
    return B


def reg_loss_class(mean_tab, num_classes=10):
    loss = 0
    for items in mean_tab:
        loss += (1. / num_classes) * torch.log((1. / num_classes) / items)
    return loss


def ref_hard_loss(output_raw, output_x1_raw, targets_1, targets_2, lam, index, B, reg_term, num_classes):
    """train_mixUp_HardBootBeta's loss, from the mixed batch's logits onwards."""
    output_mean = F.softmax(output_raw, dim=1)
    tab_mean_class = torch.mean(output_mean, -2)
    output = F.log_softmax(output_raw, dim=1)
    output_x1 = F.log_softmax(output_x1_raw, dim=1)
    output_x2 = output_x1[index, :]
    B2 = B[index]
    z1 = torch.max(output_x1, dim=1)[1]
    z2 = torch.max(output_x2, dim=1)[1]
    loss_x1_vec = (1 - B) * F.nll_loss(output, targets_1, reduction='none')
    loss_x1 = torch.sum(loss_x1_vec) / len(loss_x1_vec)
    loss_x1_pred_vec = B * F.nll_loss(output, z1, reduction='none')
    loss_x1_pred = torch.sum(loss_x1_pred_vec) / len(loss_x1_pred_vec)
    loss_x2_vec = (1 - B2) * F.nll_loss(output, targets_2, reduction='none')
    loss_x2 = torch.sum(loss_x2_vec) / len(loss_x2_vec)
    loss_x2_pred_vec = B2 * F.nll_loss(output, z2, reduction='none')
    loss_x2_pred = torch.sum(loss_x2_pred_vec) / len(loss_x2_pred_vec)
    loss = lam * (loss_x1 + loss_x1_pred) + (1 - lam) * (loss_x2 + loss_x2_pred)
    return loss + reg_term * reg_loss_class(tab_mean_class, num_classes)


def ref_soft_loss(output_raw, output_x1, targets_1, targets_2, lam, index, B, reg_term):
    """train_mixUp_SoftBootBeta's loss (reg_loss_class called without num_classes, as the reference)."""
    output_mean = F.softmax(output_raw, dim=1)
    pred = F.log_softmax(output_raw, dim=1)
    output_x2 = output_x1[index, :]
    tab_mean_class = torch.mean(output_mean, -2)
    loss = torch.sum(
        lam * ((1 - B) * F.nll_loss(pred, targets_1, reduction='none')
               + B * (-torch.sum(F.softmax(output_x1, dim=1) * pred, dim=1)))
        + (1 - lam) * ((1 - B[index]) * F.nll_loss(pred, targets_2, reduction='none')
                       + B[index] * (-torch.sum(F.softmax(output_x2, dim=1) * pred, dim=1)))) / len(pred)
    return loss + reg_term * reg_loss_class(tab_mean_class)


def _losses(n=3000, seed=0):
    """Training losses of a clean majority (small) and a noisy minority (large), as float32."""
    rng = np.random.default_rng(seed)
    clean = rng.gamma(1.0, 0.15, int(n * 0.6))
    noisy = rng.normal(3.0, 0.7, n - len(clean)).clip(0.01)
    return np.concatenate([clean, noisy]).astype(np.float32)


# ------------------------------------------------------------------------------------------ the mixture
def test_the_mixture_fit_equals_the_reference_with_scipys_density():
    for seed in range(3):
        losses = _losses(seed=seed)
        x_ref, ref, _, _ = ref_track(losses.copy())
        x, lo, hi = normalise_losses(losses.copy())
        np.testing.assert_array_equal(x, x_ref)
        ours = BetaMixture(10).fit(x)
        np.testing.assert_allclose(ours.alphas, ref.alphas, rtol=1e-9)
        np.testing.assert_allclose(ours.betas, ref.betas, rtol=1e-9)
        np.testing.assert_allclose(ours.weight, ref.weight, rtol=1e-9)
        np.testing.assert_allclose(ours.lookup, ref.lookup, rtol=1e-9, atol=1e-12)
        # the fitted components separate the two groups: the noisy one has the larger mean loss
        means = ours.alphas / (ours.alphas + ours.betas)
        assert means[1] > means[0] and 0.2 < ours.weight[1] < 0.5


def test_the_em_step_is_the_weighted_moment_match_of_scipys_beta():
    """One EM iteration by hand with scipy: responsibilities from scipy.stats.beta, then the beta whose mean
    and variance equal the weighted ones (scipy.stats.beta(a, b).stats gives them back)."""
    x, _, _ = normalise_losses(_losses(seed=5))
    x = x.astype(np.float64)
    bmm = BetaMixture(1).fit(x)
    x = np.clip(x, 1e-4, 1 - 1e-4)  # the fit keeps the values off 0 and 1
    dens = np.array([0.5 * stats.beta.pdf(x, 1, 2), 0.5 * stats.beta.pdf(x, 2, 1)])
    r = np.maximum(dens, 1e-12) / np.maximum(dens, 1e-12).sum(0)
    for k in range(2):
        m = np.average(x, weights=r[k])
        v = np.average((x - m) ** 2, weights=r[k])
        mean, var = stats.beta(bmm.alphas[k], bmm.betas[k]).stats("mv")
        assert mean == pytest.approx(m, rel=1e-10) and var == pytest.approx(v, rel=1e-10)
    np.testing.assert_allclose(bmm.weight, r.mean(1), rtol=1e-12)


def test_noise_weights_equal_the_reference_lookup():
    losses = _losses(seed=1)
    _, ref, bmm_max, bmm_min = ref_track(losses.copy())
    m = MDYR(bootstrap_from=2)
    x, m.loss_lo, m.loss_hi = normalise_losses(losses.copy())
    m.bmm = BetaMixture(10).fit(x)
    batch = torch.from_numpy(np.random.default_rng(9).uniform(0, 5, 512).astype(np.float32))
    torch.testing.assert_close(m.noise_weights(batch.clone()),
                               ref_probabilities(batch.clone(), ref, bmm_max, bmm_min), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- the losses
@pytest.mark.parametrize("k", [10, 7])
def test_hard_loss_equals_the_reference(k):
    g = torch.Generator().manual_seed(k)
    n = 32
    out, out1 = torch.randn(n, k, generator=g), torch.randn(n, k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    index = torch.randperm(n, generator=g)
    B = torch.rand(n, generator=g).clamp(1e-4, 1 - 1e-4)
    lam = float(np.random.default_rng(k).beta(32, 32))
    ours = bootstrap_loss(out, y, index, lam, B, out1, "hard", 1.0, k)
    ref = ref_hard_loss(out, out1, y, y[index], lam, index, B, 1.0, k)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_soft_loss_equals_the_reference_and_its_prior_of_ten_classes():
    g = torch.Generator().manual_seed(3)
    n, k = 32, 10
    out, out1 = torch.randn(n, k, generator=g), torch.randn(n, k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    index = torch.randperm(n, generator=g)
    B = torch.rand(n, generator=g)
    ours = bootstrap_loss(out, y, index, 0.3, B, out1, "soft", 0.5, k, prior_classes=10)
    torch.testing.assert_close(ours, ref_soft_loss(out, out1, y, y[index], 0.3, index, B, 0.5),
                               rtol=1e-6, atol=1e-6)
    # with 100 classes the reference's regulariser keeps the 1/10 prior; soft_reg: num_classes uses 1/K
    out100, out1_100 = torch.randn(n, 100, generator=g), torch.randn(n, 100, generator=g)
    y100 = torch.randint(0, 100, (n,), generator=g)
    ref100 = ref_soft_loss(out100, out1_100, y100, y100[index], 0.3, index, B, 0.5)
    torch.testing.assert_close(bootstrap_loss(out100, y100, index, 0.3, B, out1_100, "soft", 0.5, 100, 10), ref100,
                               rtol=1e-6, atol=1e-6)
    assert not torch.allclose(bootstrap_loss(out100, y100, index, 0.3, B, out1_100, "soft", 0.5, 100), ref100)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(6, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(4, 6, generator=g))

    def forward(self, x):
        return self.bn(self.lin(x))


def _ctx(train, epoch, seed=0):
    return Context(task="classification", num_classes=4, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed), train=train, fetch=lambda i: (train.x[i], train.y[i]),
                   epochs=5, epoch=epoch, model=None, eval_batches=None)


def test_a_step_equals_the_reference_step_on_the_same_draws():
    """The method's forward (train-mode prediction, eval-mode losses -> weights, mixed forward) against the
    reference's train_mixUp_HardBootBeta body with the same lambda and permutation, BatchNorm included."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 4, (64,), generator=g)
    train = Split(torch.randn(500, 6, generator=g), torch.randint(0, 4, (500,), generator=g))
    net = _Net()
    m = MDYR(bootstrap_from=2)
    ctx = _ctx(train, 2)
    ctx.model = net
    m.start_epoch(2, ctx)
    assert m.fitted_for == 2 and m.bmm is not None
    ref_net = copy.deepcopy(net)
    net.train(), ref_net.train()
    draws = np.random.default_rng(0)
    out = m(net, Batch(x, y, torch.arange(64)), _ctx(train, 2, seed=0))
    lam, index = float(draws.beta(32, 32)), torch.from_numpy(draws.permutation(64))
    # the reference, from its own BMM fitted on the same training losses
    ref_net.eval()
    with torch.no_grad():
        losses = F.nll_loss(F.log_softmax(ref_net(train.x), 1), train.y, reduction="none").numpy()
    _, bmm, bmax, bmin = ref_track(losses)
    ref_net.train()
    output_x1 = ref_net(x).detach()
    ref_net.eval()
    with torch.no_grad():
        bl = F.nll_loss(F.log_softmax(ref_net(x), 1).float(), y, reduction="none")
    ref_net.train()
    B = ref_probabilities(bl, bmm, bmax, bmin)
    mixed = lam * x + (1 - lam) * x[index, :]
    ref = ref_hard_loss(ref_net(mixed), output_x1, y, y[index], lam, index, B, 1.0, 4)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(net.state_dict().values(), ref_net.state_dict().values()):  # BN statistics too
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_before_bootstrap_from_it_is_plain_mixup():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    net = _Net()
    out = MDYR(bootstrap_from=3)(net, Batch(x, y, torch.arange(16)), _ctx(Split(x, y), 2, seed=4))
    draws = np.random.default_rng(4)
    lam, perm = float(draws.beta(32, 32)), torch.from_numpy(draws.permutation(16))
    assert out.loss is None and torch.equal(out.y_b, y[perm])
    torch.testing.assert_close(out.lam, torch.full((16,), lam))
    torch.testing.assert_close(out.logits, net(lam * x + (1 - lam) * x[perm]))


def test_state_dict_restores_the_mixture():
    g = torch.Generator().manual_seed(5)
    train = Split(torch.randn(300, 6, generator=g), torch.randint(0, 4, (300,), generator=g))
    m = MDYR(bootstrap_from=2)
    ctx = _ctx(train, 2)
    ctx.model = _Net()
    m.start_epoch(2, ctx)
    state = m.state_dict()
    fresh = MDYR(bootstrap_from=2)
    fresh.load_state_dict(copy.deepcopy(state))
    probe = torch.rand(100) * 3
    assert torch.equal(fresh.noise_weights(probe), m.noise_weights(probe)) and fresh.fitted_for == 2
    fresh.start_epoch(2, ctx)  # already fitted for this epoch: kept
    assert torch.equal(fresh.state_dict()["bmm"]["lookup"], state["bmm"]["lookup"])
    torch.save(state, "/dev/null")  # plain tensors and numbers: loadable with weights_only


# ------------------------------------------------------------------------------------------ through cli
EXP = """\
name: md
dataset: {name: digits, fraction: 0.2, label_noise: {kind: symmetric, rate: 0.4}}
model: {name: cnn, width: 4}
method: {name: mdyr, bootstrap_from: 2, BOOT}
train: {epochs: 3, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
seeds: [0]
"""


def test_resume_is_exact(cli, write, tmp_path, monkeypatch):
    """Interrupted during epoch 3 and resumed: weights and the fitted mixture equal the uninterrupted run's."""
    p = write(EXP.replace("BOOT", "bootstrap: hard"))
    a, b = full_and_resumed(cli, p, tmp_path, monkeypatch, evaluations=4)
    assert a["method"]["fitted_for"] == b["method"]["fitted_for"] == 3
    for key in a["method"]["bmm"]:
        torch.testing.assert_close(a["method"]["bmm"][key], b["method"]["bmm"][key], rtol=0, atol=0)


def test_soft_run_on_digits(cli, write, tmp_path):
    code, out = cli("run", write(EXP.replace("BOOT", "bootstrap: soft")), "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, out


@pytest.mark.parametrize("opts, message", [
    ("bootstrap: medium", "bootstrap must be hard (M-DYR-H) or soft (M-DYR-S)"),
    ("bootstrap_from: 1", "bootstrap_from must be an integer >= 2"),
    ("alpha: 0.0", "alpha must be > 0"),
    ("reg_term: -1.0", "reg_term must be >= 0"),
    ("soft_reg: paper", "soft_reg must be reference or num_classes"),
])
def test_validate_refuses_bad_options_in_one_line(cli, write, opts, message):
    code, out = cli("validate", write(EXP.replace("bootstrap_from: 2, BOOT", opts)))
    assert code == 2 and message in out and len(out.strip().splitlines()) == 1 and "Traceback" not in out


def test_validate_refuses_a_regression_task(cli, write):
    p = write("name: r\ntask: regression\ndataset: airfoil\nmodel: {name: mlp, widths: [8]}\nmethod: mdyr\n")
    code, out = cli("validate", p)
    assert code == 2 and "mdyr' supports task classification" in out
