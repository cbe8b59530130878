"""Reference-code behaviours offered as defaults or options, each against an independent port of the
reference formula: RegMixup's mean (FrancescoPinto/RegMixup), Decoupled Mixup's eta assignment (OpenMixup
``soft_mix_cross_entropy`` + ``ClsMixupHead``), Manifold Mixup's BCE of softmax (vikasverma1077/manifold_mixup)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scipy.stats import chisquare

from mixcli.api import Batch, Context, MixOutput, Model, PluginError, Split
from mixcli_plugins.losses.decoupled import Decoupled
from mixcli_plugins.methods.manifold_mixup import ManifoldMixup
from mixcli_plugins.methods.mixup import Mixup
from mixcli_plugins.methods.regmixup import RegMixup
from mixcli_plugins.models.mlp import MLP


def ctx_for(model, x, y, k=10, seed=0) -> Context:
    return Context(task="classification", num_classes=k, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed), train=Split((x * 50).clamp(0, 255).to(torch.uint8), y),
                   fetch=lambda i: (x[i], y[i]), epochs=1, model=model)


def data(n=12, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, k, (n,), generator=g)


# ---------------------------------------------------------------------------------------------- regmixup
def test_regmixup_default_is_the_reference_mean_over_the_concatenated_batch():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=[16])
    x, y = data()
    out = RegMixup()(model, Batch(x, y, torch.arange(12)), ctx_for(model, x, y, seed=5))
    # the reference training step: mixup_data, then one CrossEntropyLoss (mean) over cat([x, x_mix])
    rng = np.random.default_rng(5)
    lam = rng.beta(20, 20)
    perm = torch.from_numpy(rng.permutation(12))
    inputs = torch.cat([x, lam * x + (1 - lam) * x[perm]])
    targets_a, targets_b = torch.cat([y, y]), torch.cat([y, y[perm]])
    ce = nn.CrossEntropyLoss()
    z = model(inputs)
    ref = lam * ce(z, targets_a) + (1 - lam) * ce(z, targets_b)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-5)
    # the paper's sum is the option, twice the reference at eta = 1
    out_sum = RegMixup(average=False)(model, Batch(x, y, torch.arange(12)), ctx_for(model, x, y, seed=5))
    torch.testing.assert_close(out_sum.loss, 2 * ref, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- decoupled
def reference_soft_mix_ce(pred, label, eta_weight, eps=1e-3):
    """The reference's decoupled soft CE for one batch-wide lam, ported step by step from its description:
    unmixed rows get plain soft CE; on the mixed rows, eta_weight[i] multiplies -log softmax over the class
    whose target equals lam_k[i] plus every unmixed class, lam_k being the first mixed row's target weights
    in ascending class order; both parts are summed and divided by the whole batch size."""
    n = pred.shape[0]
    two = (label > eps).sum(1) >= 2
    total = torch.zeros(())
    for r in range(n):
        total = total - (label[r] * F.log_softmax(pred[r], 0)).sum()
    rows = two.nonzero().flatten().tolist()
    if rows:
        r0 = rows[0]
        lam_k = label[r0][label[r0] > eps]  # ascending class index
        if len(set(lam_k.tolist())) == len(lam_k):
            for r in rows:
                for i, li in enumerate(lam_k):
                    keep = [c for c in range(label.shape[1]) if label[r, c] == li or label[r, c] <= eps]
                    target = [c for c in keep if label[r, c] == li][0]
                    logp = F.log_softmax(pred[r, keep], 0)[keep.index(target)]
                    total = total - eta_weight[i] * logp
    return total / n


@pytest.mark.parametrize("first_a_smaller", [True, False])
def test_decoupled_reference_eta_order_matches_the_reference(first_a_smaller):
    torch.manual_seed(1)
    k, lam, eta = 6, 0.7, 0.1
    logits = torch.randn(8, k)
    ya = torch.tensor([1, 4, 2, 5, 0, 3, 3, 2])
    yb = torch.tensor([3, 0, 2, 1, 5, 4, 0, 1])  # row 2 pairs a class with itself
    if not first_a_smaller:
        ya, yb = yb.clone(), ya.clone()
        ya[2] = yb[2]
    out = MixOutput(logits, ya, yb, torch.full((8,), lam))
    label = lam * F.one_hot(ya, k).float() + (1 - lam) * F.one_hot(yb, k).float()
    ctx = Context("classification", k, torch.device("cpu"), np.random.default_rng(0), None, None, 1)
    # ClsMixupHead, mode both, lam_scale_mode pow, lam_idx 1: eta_weight = [eta * lam, eta * (1 - lam)]
    want = reference_soft_mix_ce(logits, label, [eta * lam, eta * (1 - lam)])
    got = Decoupled(eta=eta, eta_order="reference")(out, ctx)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    plain = Decoupled(eta=eta)(out, ctx)
    if first_a_smaller:  # the reference's order agrees with the lam order
        torch.testing.assert_close(plain, want, atol=1e-6, rtol=1e-5)
    else:  # swapped: each class gets the other's weight
        assert abs(plain.item() - want.item()) > 1e-4
        swapped = reference_soft_mix_ce(logits, label, [eta * (1 - lam), eta * lam])
        torch.testing.assert_close(plain, swapped, atol=1e-6, rtol=1e-5)


def test_decoupled_rejects_an_unknown_eta_order():
    with pytest.raises(PluginError, match="eta_order must be lam or reference"):
        Decoupled(eta_order="paper")


# ---------------------------------------------------------------------------------------- manifold mixup
def test_manifold_mixup_bce_softmax_is_the_official_criterion():
    torch.manual_seed(2)
    model = MLP((1, 8, 8), 10, widths=[16, 16])
    x, y = data(seed=3)
    ctx = ctx_for(model, x, y, seed=7)
    m = ManifoldMixup(criterion="bce_softmax", positions=[0, 1])
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(12)), ctx)
    # the official step: reweighted one-hot target, nn.BCELoss()(softmax(output), target)
    rng = np.random.default_rng(7)
    layer = [0, 1][int(rng.integers(2))]
    lam = rng.beta(2.0, 2.0)
    perm = torch.from_numpy(rng.permutation(12))
    h = model.forward_to(x, layer)
    output = model.forward_from(lam * h + (1 - lam) * h[perm], layer)
    target = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y[perm], 10).float()
    ref = nn.BCELoss()(nn.Softmax(dim=1)(output), target)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-5)
    # the default leaves the loss to the loss plugin (the paper's mixed cross-entropy)
    m = ManifoldMixup(positions=[0, 1])
    m.setup(ctx)
    assert m(model, Batch(x, y, torch.arange(12)), ctx).loss is None
    with pytest.raises(PluginError, match="criterion must be one of soft_ce, bce_softmax"):
        ManifoldMixup(criterion="bce")


# ------------------------------------------------------------------- regression baselines: partners: dataset
class Identity(Model):
    """stages, pool and classifier are identities: the output IS the (mixed) input."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Identity(), nn.Identity()])
        self.pool, self.classifier = nn.Identity(), nn.Identity()


def regression_ctx(y, seed=0):
    return Context(task="regression", num_classes=None, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed), train=Split(y.clone(), y), fetch=lambda i: (y[i].clone(), y[i]),
                   epochs=1, model=Identity())


@pytest.mark.parametrize("make", [lambda: Mixup(alpha=2.0, partners="dataset"),
                                  lambda: ManifoldMixup(alpha=2.0, positions=[1], partners="dataset")])
def test_dataset_partners_are_uniform_over_the_training_set(make):
    n_train = 40
    y = torch.arange(n_train, dtype=torch.float32).unsqueeze(1) * 10  # label = 10 x the row index
    ctx = regression_ctx(y)
    m = make()
    m.setup(ctx)
    idx = torch.arange(8)  # a batch of the first 8 rows
    counts = np.zeros(n_train)
    for _ in range(1500):
        out = m(ctx.model, Batch(y[idx], y[idx], idx), ctx)
        lam = out.lam.view(-1, 1)
        partner = (out.y_b[:, 0] / 10).round().long()
        counts += np.bincount(partner.numpy(), minlength=n_train)
        # the output is the mixed input and the target mixes the partner's label the same way
        torch.testing.assert_close(out.logits, lam * y[idx] + (1 - lam) * y[partner])
    assert counts[8:].sum() > 0.7 * counts.sum()  # mostly outside the batch: 32 of 40 rows
    assert chisquare(counts).pvalue > 1e-3  # uniform over all N training rows, with replacement


def test_dataset_partners_option_errors():
    with pytest.raises(PluginError, match="partners must be one of batch, dataset"):
        Mixup(partners="train")
    with pytest.raises(PluginError, match="partners: dataset.*set cutmix_alpha 0"):
        Mixup(partners="dataset", cutmix_alpha=1.0)
    with pytest.raises(PluginError, match="partners must be one of batch, dataset"):
        ManifoldMixup(partners="all")
