"""AlignMixup, the Decoupled Mixup loss, RegMixup and off_after_epoch: values against independent
computations, invariants, and runs through the real engine."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mixcli.api import Batch, Context, Method, MixOutput, Split, soft_targets
from mixcli.registry import REGISTRY, Entry
from mixcli_plugins.losses.decoupled import Decoupled
from mixcli_plugins.losses.soft_ce import SoftCrossEntropy
from mixcli_plugins.methods.alignmix import AlignMix, align, assignment, sinkhorn, sq_cost
from mixcli_plugins.methods.regmixup import RegMixup
from mixcli_plugins.models.cnn import CNN
from mixcli_plugins.models.mlp import MLP

from conftest import TINY

CNN_RUN = TINY.replace("{name: mlp, widths: [32]}", "{name: cnn, width: 8}").replace("epochs: 3", "epochs: 2")


def ctx_for(model, x, y, k=10, seed=0) -> Context:
    return Context(task="classification", num_classes=k, device=torch.device("cpu"),
                   rng=np.random.default_rng(seed), train=Split((x * 50).clamp(0, 255).to(torch.uint8), y),
                   fetch=lambda i: (x[i], y[i]), epochs=1, model=model)


def relu_maps(b=6, c=32, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(b, c, h, w, generator=g))


def reference_sinkhorn(cost, eps=0.1, max_iter=100, thresh=0.1):
    """A literal port of the official utils/OT.py loop (host check every iteration)."""
    b, r, _ = cost.shape
    mu = torch.full((b, r), 1.0 / r)
    u, v = torch.zeros_like(mu), torch.zeros_like(mu)

    def M(u, v):
        return (-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps
    for _ in range(max_iter):
        u1 = u
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(u, v), dim=-1)) + u
        v = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(u, v).transpose(-2, -1), dim=-1)) + v
        if (u - u1).abs().sum(-1).mean().item() < thresh:
            break
    return torch.exp(M(u, v))


# ---------------------------------------------------------------------------------------------- alignmix
@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0, 3.0])  # the reference stops after 2, 5, 47, 100 iterations
def test_sinkhorn_equals_reference_loop(scale):
    a = relu_maps(8, 16, seed=1).flatten(2) * scale
    b = relu_maps(8, 16, seed=2).flatten(2) * scale
    cost = sq_cost(a, b)
    direct = ((a.transpose(1, 2)[:, :, None, :] - b.transpose(1, 2)[:, None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(cost, direct, atol=1e-4, rtol=1e-5)
    ref = reference_sinkhorn(direct)
    # plan entries are <= 1/16; at scale 3 (costs ~100 = 1000 eps) float32 rounding inside exp(./eps) differs
    # between the reference's u-units and our eps-units by up to ~1.5e-5
    atol = 2e-5 if scale > 1 else 1e-6
    for check_every in (1, 7, 10):  # the chunking of the iterations does not change the result
        torch.testing.assert_close(sinkhorn(cost, check_every=check_every), ref, atol=atol, rtol=1e-4)


def test_sinkhorn_marginals_are_uniform():
    r = 16
    cost = sq_cost(relu_maps(8, 16, seed=3).flatten(2), relu_maps(8, 16, seed=4).flatten(2)) * 0.05
    tight = sinkhorn(cost, eps=0.1, max_iter=2000, tol=1e-7)
    torch.testing.assert_close(tight.sum(2), torch.full((8, r), 1 / r), atol=1e-5, rtol=0)
    torch.testing.assert_close(tight.sum(1), torch.full((8, r), 1 / r), atol=1e-5, rtol=0)
    # the paper's settings (eps 0.1, <= 100 iterations, stop at batch-mean |du|_1 < 0.1): v is updated last,
    # so column sums are exact; row sums are within the loose stopping tolerance (sum_i |log r P_i.| <~ tol/eps)
    P = sinkhorn(cost)
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(1), torch.full((8, r), 1 / r), atol=1e-6, rtol=1e-4)
    assert (P.sum(2) * r).log().abs().sum(1).mean() < 1.0
    assert P.sum((1, 2)).sub(1).abs().max() < 1e-5


def test_align_with_itself_returns_it():
    # with the paper's eps = 0.1 the plan is a near-permutation when distinct positions are >> eps apart
    # (random ReLU maps: squared distances ~ C); the identity is then reproduced to float precision
    a = relu_maps()
    torch.testing.assert_close(align(a, a), a, atol=1e-4, rtol=1e-4)
    R = assignment(a, a)
    torch.testing.assert_close(R, torch.eye(16).expand(6, 16, 16), atol=1e-4, rtol=0)


def test_permuted_spatial_map_is_recovered():
    a = relu_maps(seed=5)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    ap = a.flatten(2)[:, :, perm].view(a.shape)
    torch.testing.assert_close(align(a, ap), a, atol=1e-4, rtol=1e-4)   # A' R^T: A' put into A's geometry
    R = assignment(a, ap)
    torch.testing.assert_close((a.flatten(2) @ R).view(a.shape), ap, atol=1e-4, rtol=1e-4)  # A R = A'


def test_batched_equals_per_sample():
    # a fixed number of iterations (tol 0): the batched solve is per sample (the stopping rule is batch-wide)
    a, b = relu_maps(5, 8, seed=6) * 0.2, relu_maps(5, 8, seed=7) * 0.2
    batched = align(a, b, max_iter=30, tol=0.0)
    single = torch.cat([align(a[i:i + 1], b[i:i + 1], max_iter=30, tol=0.0) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)


class SpyCNN(CNN):
    """Records the positions forward_from starts at (0: input mixup, num_stages: aligned features)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.starts = []

    def forward_from(self, h, position):
        self.starts.append(position)
        return super().forward_from(h, position)


def test_alignmix_lambda_beta22_branches_and_targets():
    torch.manual_seed(0)
    model = SpyCNN((1, 8, 8), 10, width=2)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    ctx = ctx_for(model, x, y)
    method = AlignMix()
    method.setup(ctx)
    lams = []
    with torch.no_grad():
        for _ in range(1000):
            out = method(model, Batch(x, y, torch.arange(4)), ctx)
            lams.append(float(out.lam[0]))
            assert out.logits.shape == (4, 10) and out.logits.dtype == torch.float32
            assert (out.lam == out.lam[0]).all()
            t = soft_targets(out, 10)
            torch.testing.assert_close(t.sum(1), torch.ones(4))
            assert sorted(out.y_b.tolist()) == [0, 1, 2, 3]
    assert stats.kstest(lams, stats.beta(2, 2).cdf).pvalue > 1e-3
    assert all(0 < v < 1 for v in lams)
    aligned = sum(s == model.num_stages for s in model.starts)
    assert set(model.starts) == {0, model.num_stages}
    assert stats.binomtest(aligned, len(model.starts), 0.5).pvalue > 1e-3


def test_alignmix_feature_branch_equals_independent_computation():
    torch.manual_seed(1)
    model = CNN((1, 8, 8), 10, width=4).eval()  # eval: BatchNorm gives the same features each forward
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    method = AlignMix(input_prob=0.0)
    for seed in range(6):
        ctx = ctx_for(model, x, y, seed=seed)
        out = method(model, Batch(x, y, torch.arange(6)), ctx)
        rng = np.random.default_rng(seed)
        lam = rng.beta(2, 2)
        rng.random()  # the input-mixup coin (input_prob 0: never taken)
        perm = torch.from_numpy(rng.permutation(6))
        a = model.forward_to(x, 3)
        b = a[perm]
        if rng.integers(2) == 0:
            mix = lam * a + (1 - lam) * align(a, b)
        else:
            R = assignment(a, b)  # A R: A moved into A''s geometry
            mix = lam * torch.einsum("bcr,brs->bcs", a.flatten(2), R).view(a.shape) + (1 - lam) * b
        torch.testing.assert_close(out.logits, model.forward_from(mix, 3), atol=1e-5, rtol=1e-5)
        assert out.y_b.tolist() == y[perm].tolist() and float(out.lam[0]) == pytest.approx(lam)


def test_alignmix_gradient_skips_sinkhorn_but_reaches_the_features():
    model = CNN((1, 8, 8), 10, width=4)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    out = AlignMix(input_prob=0.0)(model, Batch(x, y, torch.arange(8)), ctx_for(model, x, y))
    SoftCrossEntropy()(out, ctx_for(model, x, y)).backward()
    g = model.stages[0][0].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_alignmix_one_epoch_on_digits_and_mlp_is_refused(cli, write, tmp_path):
    p = write(CNN_RUN.replace("method: erm", "method: alignmix"))
    code, text = cli("run", p, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, text
    runs = pd.read_parquet(tmp_path / "o" / "runs")
    assert runs["status"].tolist() == ["finished"] and runs["final_test_accuracy"].iloc[0] > 0.3
    code, text = cli("run", write(TINY.replace("method: erm", "method: alignmix")), "--out", tmp_path / "m",
                     "--device", "cpu")
    assert code == 2 and "alignmix" in text and "spatial positions" in text


@pytest.mark.parametrize("kwargs", [{"alpha": 0}, {"input_prob": 1.5}, {"eps": 0}, {"max_iter": 0}, {"compile": "yes"}])
def test_alignmix_bad_options(kwargs):
    from mixcli.api import PluginError
    with pytest.raises(PluginError, match=next(iter(kwargs))):
        AlignMix(**kwargs)


# --------------------------------------------------------------------------------------------- decoupled
def lse(*v):
    return math.log(sum(math.exp(t) for t in v))


def hand_value(z, a, b, lam, eta, wa, wb, tau=1.0):
    """L = -lam log s_a - (1-lam) log s_b - eta [wa log phi_{a|not b} + wb log phi_{b|not a}], by hand."""
    others = [t for i, t in enumerate(z) if i not in (a, b)]
    mce = -(lam * (z[a] - lse(*z)) + (1 - lam) * (z[b] - lse(*z)))
    phi_a = z[a] / tau - lse(z[a] / tau, *[t / tau for t in others])
    phi_b = z[b] / tau - lse(z[b] / tau, *[t / tau for t in others])
    return mce - eta * (wa * phi_a + wb * phi_b)


def dm_out(z, ya, yb, lam):
    return MixOutput(torch.tensor(z, dtype=torch.float32, requires_grad=True), torch.tensor(ya),
                     torch.tensor(yb), torch.tensor(lam, dtype=torch.float32))


K3 = Context("classification", 3, torch.device("cpu"), np.random.default_rng(0), None, None, 1)


def test_decoupled_equals_hand_computed_3_class_example():
    z = [1.0, 2.0, 0.5]
    # a = 0, b = 1, lam = 0.7, eta = 0.1, p = 1, both: phi_{0|not 1} = e^1 / (e^1 + e^0.5), etc.
    by_hand = -(0.7 * (1 - math.log(math.e + math.e ** 2 + math.e ** 0.5))
                + 0.3 * (2 - math.log(math.e + math.e ** 2 + math.e ** 0.5))) \
        - 0.1 * (0.7 * math.log(math.e / (math.e + math.e ** 0.5))
                 + 0.3 * math.log(math.e ** 2 / (math.e ** 2 + math.e ** 0.5)))
    # by hand: log(e + e^2 + e^0.5) = 2.4643688, MCE = 0.7 * 1.4643688 + 0.3 * 0.4643688 = 1.1643688;
    # phi_{0|not 1} = sigmoid(0.5) = 0.6224593, phi_{1|not 0} = sigmoid(1.5) = 0.8175745;
    # L_DR = -(0.7 log 0.6224593 + 0.3 log 0.8175745) = 0.3922779;  L = 1.1643688 + 0.1 * 0.3922779
    assert by_hand == pytest.approx(1.2035966, abs=1e-7)
    got = Decoupled()(dm_out([z], [0], [1], [0.7]), K3)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)
    cases = [  # (options, lam, w_a, w_b)
        ({"mode": "more", "p": 0.5}, 0.7, 0.7 ** 0.5, 0.0), ({"mode": "more", "p": 0.5}, 0.3, 0.0, 0.7 ** 0.5),
        ({"mode": "less", "p": 0.5}, 0.7, 0.0, 0.3 ** 0.5), ({"mode": "less", "p": 0.5}, 0.3, 0.3 ** 0.5, 0.0),
        ({"mode": "both", "p": 0.0}, 0.2, 1.0, 1.0), ({"mode": "both", "p": 2.0, "eta": 0.5}, 0.6, 0.36, 0.16),
        ({"tau": 2.0}, 0.7, 0.7, 0.3),
    ]
    for opts, lam, wa, wb in cases:
        want = hand_value(z, 0, 1, lam, opts.get("eta", 0.1), wa, wb, opts.get("tau", 1.0))
        assert Decoupled(**opts)(dm_out([z], [0], [1], [lam]), K3).item() == pytest.approx(want, rel=1e-6), opts


def test_decoupled_per_sample_lambda_and_same_class_rows():
    z = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 1.0, 3.0]]
    out = dm_out(z, [0, 2, 1], [1, 0, 1], [0.7, 0.25, 0.6])
    rows = [hand_value(z[0], 0, 1, 0.7, 0.1, 0.7, 0.3), hand_value(z[1], 2, 0, 0.25, 0.1, 0.25, 0.75),
            -(z[2][1] - lse(*z[2]))]  # row 3 pairs class 1 with itself: plain cross-entropy
    loss = Decoupled()(out, K3)
    assert loss.item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(out.logits.grad).all()


def test_decoupled_gradient_flows_and_eta_zero_is_mixed_ce():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, requires_grad=True)
    ya, yb = torch.randint(0, 10, (16,)), torch.randint(0, 10, (16,))
    out = MixOutput(logits, ya, yb, torch.rand(16), smoothing=0.1)
    ctx = Context("classification", 10, torch.device("cpu"), np.random.default_rng(0), None, None, 1)
    torch.testing.assert_close(Decoupled(eta=0.0)(out, ctx), SoftCrossEntropy()(out, ctx))
    reg = Decoupled(eta=1.0)(out, ctx) - SoftCrossEntropy()(out, ctx)
    assert reg.item() > 0
    g, = torch.autograd.grad(reg, logits)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert g[ya == yb].abs().sum() == 0  # same-class rows: no regulariser


def test_cutmix_with_decoupled_loss_through_the_engine(cli, write, tmp_path):
    grid = "grid: [{method: [erm]}, {method: [{name: cutmix, alpha: 0.2}], loss: [{name: decoupled, eta: 0.1}]}]\n"
    code, text = cli("run", write(CNN_RUN + grid), "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, text
    runs = pd.read_parquet(tmp_path / "o" / "runs").sort_values("method")
    assert runs["loss"].tolist() == ["decoupled", "soft_ce"] and set(runs["status"]) == {"finished"}
    assert (runs["final_test_accuracy"] > 0.3).all()
    # the table has one row per (method, loss); the decoupled loss's options exist for one loss only
    code, text = cli("compare", tmp_path / "o", "--format", "json")
    doc = json.loads(text)
    assert doc["by"] == ["method", "loss"]
    assert [(g["method"], g["loss"], g["n"]) for g in doc["groups"]] == [("cutmix", "decoupled", 1), ("erm", "soft_ce", 1)]
    code, text = cli("run", write(CNN_RUN.replace("method: erm", "loss: {name: decoupled, mode: all}"), "b.yaml"),
                     "--out", tmp_path / "b", "--device", "cpu")
    assert code == 2 and "mode must be one of both, more, less" in text


# ---------------------------------------------------------------------------------------------- regmixup
def test_regmixup_equals_clean_ce_plus_eta_mixup_ce():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, widths=[16])  # no BatchNorm: separate forwards are independent of batching
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    for eta, average in ((1.0, False), (0.5, False), (1.0, True)):
        out = RegMixup(eta=eta, average=average)(model, Batch(x, y, torch.arange(12)), ctx_for(model, x, y, seed=3))
        rng = np.random.default_rng(3)
        lam = rng.beta(20, 20)
        perm = torch.from_numpy(rng.permutation(12))
        zm = model(lam * x + (1 - lam) * x[perm])
        want = F.cross_entropy(model(x), y) + eta * (lam * F.cross_entropy(zm, y) + (1 - lam) * F.cross_entropy(zm, y[perm]))
        if average:  # the reference: mean CE over the concatenated 2B rows with targets [y; y_a], [y; y_b]
            z = torch.cat([model(x), zm])
            ref = lam * F.cross_entropy(z, torch.cat([y, y])) + (1 - lam) * F.cross_entropy(z, torch.cat([y, y[perm]]))
            torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-5)
            want = want / (1 + eta)
        torch.testing.assert_close(out.loss, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.logits, model(x), atol=1e-6, rtol=1e-5)
        assert (out.lam == 1).all() and out.y_a.tolist() == y.tolist()


def test_regmixup_one_epoch_through_the_engine(cli, write, tmp_path):
    p = write(CNN_RUN.replace("method: erm", "method: regmixup"))
    code, text = cli("run", p, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, text
    epochs = pd.read_parquet(tmp_path / "o" / "epochs")
    runs = pd.read_parquet(tmp_path / "o" / "runs")
    assert runs["status"].tolist() == ["finished"] and runs["final_test_accuracy"].iloc[0] > 0.3
    assert epochs["train_loss"].is_monotonic_decreasing


# ------------------------------------------------------------------------------------------ off_after_epoch
class Recorder(Method):
    """Test method: plain training that records the epochs in which the engine called it."""

    calls: list = []
    starts: list = []

    def start_epoch(self, epoch, ctx):
        Recorder.starts.append(epoch)

    def __call__(self, model, batch, ctx):
        Recorder.calls.append(ctx.epoch)
        return MixOutput.unmixed(model(batch.x), batch.y)


def test_off_after_epoch_switches_the_method_off_in_the_engine(cli, write, tmp_path, monkeypatch):
    entries = REGISTRY.entries("methods")
    monkeypatch.setitem(entries, "recorder", Entry("methods", "recorder", "x:Recorder", "tests", "0", _obj=Recorder))
    Recorder.calls, Recorder.starts = [], []
    p = write(TINY.replace("method: erm", "method: {name: recorder, off_after_epoch: 2}").replace("epochs: 3", "epochs: 4"))
    code, text = cli("run", p, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, text
    steps = 1257 // 64
    assert Recorder.starts == [1, 2] and Recorder.calls == [1] * steps + [2] * steps
    epochs = pd.read_parquet(tmp_path / "o" / "epochs")
    assert epochs["epoch"].tolist() == [1, 2, 3, 4]  # training went on, without the method


# ------------------------------------------------------------------------------- a list of grids (the union)
def test_grid_list_runs_the_union_of_its_products(cli, write, tmp_path):
    grid = ("grid:\n  - method: [erm, {name: mixup, alpha: 0.4}]\n    train.epochs: [1, 2]\n"
            "  - method: [{name: cutmix, alpha: 0.2}]\n    loss: [{name: decoupled, eta: 0.1}]\n")
    from mixcli.config.jobs import expand
    from mixcli.config.spec import load_experiment
    jobs = expand(load_experiment(write(TINY.replace("seeds: [0]", "seeds: [0, 1]\n" + grid))))
    got = [(j.config["method"]["name"], j.config["loss"]["name"], j.config["train"]["epochs"], j.config["seed"])
           for j in jobs]
    assert got == [("erm", "soft_ce", 1, 0), ("erm", "soft_ce", 1, 1), ("erm", "soft_ce", 2, 0),
                   ("erm", "soft_ce", 2, 1), ("mixup", "soft_ce", 1, 0), ("mixup", "soft_ce", 1, 1),
                   ("mixup", "soft_ce", 2, 0), ("mixup", "soft_ce", 2, 1), ("cutmix", "decoupled", 3, 0),
                   ("cutmix", "decoupled", 3, 1)]
    code, text = cli("run", write(TINY + "grid: [{method: [erm]}, 3]\n", "bad.yaml"), "--dry-run")
    assert code == 2 and "or a list of such mappings" in text


def test_compiled_sinkhorn_equals_eager():
    a, b = relu_maps(8, 16, seed=8), relu_maps(8, 16, seed=9)
    cost = sq_cost(a.flatten(2), b.flatten(2))
    torch.testing.assert_close(sinkhorn(cost, max_iter=6, tol=0.0, check_every=3, compiled=True),
                               sinkhorn(cost, max_iter=6, tol=0.0, check_every=3), atol=1e-6, rtol=1e-4)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    import mixcli_plugins.methods.alignmix as am

    def broken(*a):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(am, "_COMPILED", [broken])
    model = CNN((1, 8, 8), 10, width=4).eval()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        out = AlignMix(input_prob=0.0, compile="always")(model, Batch(x, y, torch.arange(6)), ctx_for(model, x, y))
    ref = AlignMix(input_prob=0.0, compile="never")(model, Batch(x, y, torch.arange(6)), ctx_for(model, x, y))
    torch.testing.assert_close(out.logits, ref.logits)
