"""Evaluator plugins: their metrics against independent computations, the attacks against closed forms, the
corruptions' identities and severities, and that evaluating never changes the model or training."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mixcli.training import engine
from mixcli.api import DataBundle, Model
from mixcli.data.device import DeviceData
from mixcli.training.engine import autocast_for
from mixcli.metrics import all_metrics
from mixcli.training.evaluate import Evaluations
from mixcli.metrics import adaptive_ece, aupr, auroc, fit_temperature, fpr_at_tpr
from mixcli.registry import REGISTRY
from mixcli_plugins.evaluators import attacks
from mixcli_plugins.evaluators import corruptions as C

from conftest import TINY

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------ metrics
def _scores(seed=0, n_in=300, n_out=200, ties=True):
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(1.0, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    if ties:  # coarse scores: many ties within and across the two sets
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    return s_in, s_out


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_aupr_match_scikit_learn(ties):
    from sklearn.metrics import average_precision_score, roc_auc_score

    for seed in range(3):
        s_in, s_out = _scores(seed, ties=ties)
        y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
        s = np.r_[s_in, s_out]
        assert auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert aupr(s_in, s_out) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert aupr(-s_out, -s_in) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)  # AUPR-Out


def test_fpr_at_95_tpr_by_hand():
    for seed in range(3):
        s_in, s_out = _scores(seed, ties=True)
        # scan every threshold from the top: the highest one that accepts >= 95% of ID examples
        for t in sorted(set(s_in), reverse=True):
            if np.mean(s_in >= t) >= 0.95:
                break
        assert fpr_at_tpr(s_in, s_out) == pytest.approx(np.mean(s_out >= t))
    # a tiny case worked out on paper: 20 ID scores 1..20 -> keep 19 of them -> threshold 2
    assert fpr_at_tpr(np.arange(1, 21), np.array([0, 1, 2, 3, 30])) == pytest.approx(3 / 5)


def test_temperature_scaling_matches_a_scipy_fit():
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    z = rng.normal(0, 1, (400, 5))
    z[np.arange(400), y] += 2.0
    for scale in (0.5, 3.0, 8.0):  # under- and over-confident logits
        logits = z * scale
        nll = lambda t: np.mean(logsumexp(logits / t, axis=1) - logits[np.arange(400), y] / t)  # noqa: E731
        ref = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-10}).x
        t = fit_temperature(logits, y)
        assert t == pytest.approx(ref, rel=1e-4)
        assert nll(t) <= nll(t * 1.01) and nll(t) <= nll(t / 1.01)


def test_adaptive_ece_by_hand():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.1, 1.0, 45)
    correct = (rng.uniform(size=45) < conf).astype(float)
    order = np.argsort(conf)
    total = 0.0
    for b in range(15):  # 45 examples, 15 bins: three consecutive sorted examples per bin
        idx = order[3 * b:3 * b + 3]
        total += 3 / 45 * abs(correct[idx].mean() - conf[idx].mean())
    assert adaptive_ece(conf, correct) == pytest.approx(total)
    # perfectly calibrated groups give 0
    assert adaptive_ece(np.full(30, 0.5), np.tile([0.0, 1.0], 15), n_bins=1) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------ helpers
class Linear(Model):
    """A linear softmax classifier on flattened inputs (a Model with one stage)."""

    def __init__(self, in_shape, out_dim):
        super().__init__()
        self.stages = nn.ModuleList([nn.Flatten()])
        self.pool = nn.Identity()
        self.classifier = nn.Linear(int(np.prod(in_shape)), out_dim)


def _digits(val_size=180) -> DataBundle:
    return REGISTRY.get("datasets", "digits")(val_size=val_size).load()


def _run_eval(model, data, extra, seed=0, epoch=1, artifacts=None):
    dd = DeviceData(data, CPU, seed)
    cfg = {"task": "classification", "seed": seed, "eval": {"extra": extra, "extra_every": None, "batch_size": 256}}
    ev = Evaluations(cfg, dd, autocast_for(CPU, False), artifacts, epoch)
    return ev.after_eval(model, epoch), dd


def _fitted_linear(data: DataBundle) -> Linear:
    """A softmax regression fitted by scikit-learn on the normalized training images."""
    from sklearn.linear_model import LogisticRegression

    dd = DeviceData(data, CPU, 0)
    x = dd.normalize(data.train.x).flatten(1).numpy()
    clf = LogisticRegression(max_iter=300, C=0.05).fit(x, data.train.y.numpy())
    model = Linear(data.input_shape, 10)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(clf.coef_).float())
        model.classifier.bias.copy_(torch.from_numpy(clf.intercept_).float())
    return model.eval()


# ------------------------------------------------------------------------------------------------ attacks
def test_fgsm_on_a_linear_model_matches_the_closed_form():
    data = _digits()
    model = _fitted_linear(data)
    W = model.classifier.weight.detach().double().numpy()
    b = model.classifier.bias.detach().double().numpy()
    mean, std = data.mean[0], data.std[0]
    x01 = data.test.x.double().numpy().reshape(len(data.test), -1) / 255.0
    y = data.test.y.numpy()
    for eps in (2.0, 8.0, 32.0):
        # d CE / d x01 = W^T (softmax(W (x01 - mean) / std + b) - onehot(y)) / std; std > 0 keeps the sign
        z = (x01 - mean) / std @ W.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        grad = p @ W / std
        adv = np.clip(x01 + eps / 255.0 * np.sign(grad), 0.0, 1.0)
        expected = np.mean(((adv - mean) / std @ W.T + b).argmax(1) == y)
        out, _ = _run_eval(model, data, [{"name": "fgsm", "eps": eps}])
        assert out["test_fgsm_accuracy"] == pytest.approx(expected, abs=1 / len(y) + 1e-12)
        # and the perturbation itself, pixel by pixel
        dd = DeviceData(data, CPU, 0)
        ctx = Evaluations({"task": "classification", "seed": 0, "eval": {"extra": [], "batch_size": 512}},
                          dd, autocast_for(CPU, False), None, 1).context("fgsm", 1)
        grad_fn = lambda q, t: attacks._loss_grad(model, ctx, q, t)  # noqa: E731
        got = attacks.fgsm(grad_fn, ctx.pixels(data.test.x), data.test.y, eps / 255.0, clip=True)
        agree = np.isclose(got.double().numpy().reshape(len(y), -1), adv, atol=1e-6)
        assert agree.mean() > 0.999  # sign flips only where the gradient is ~0 in float32


def test_pgd_is_never_weaker_than_fgsm():
    data = _digits()
    model = _fitted_linear(data)
    clean = (model(DeviceData(data, CPU, 0).normalize(data.test.x)).argmax(1) == data.test.y).float().mean()
    for eps, start in ((4.0, True), (8.0, True), (8.0, False)):
        f, _ = _run_eval(model, data, [{"name": "fgsm", "eps": eps}])
        # the default ratio (8/255 in 10 steps of 2/255): the iterates can cross the ball 2.5 times
        p, _ = _run_eval(model, data, [{"name": "pgd", "eps": eps, "step": eps / 4, "steps": 10,
                                        "random_start": start}])
        assert p["test_pgd_accuracy"] <= f["test_fgsm_accuracy"] <= float(clean)
    f, _ = _run_eval(model, data, [{"name": "fgsm", "eps": 0.0}])
    assert f["test_fgsm_accuracy"] == pytest.approx(float(clean))


def test_pgd_stays_in_the_eps_ball_and_the_pixel_range():
    data = _digits()
    model = _fitted_linear(data)
    dd = DeviceData(data, CPU, 0)
    ctx = Evaluations({"task": "classification", "seed": 0, "eval": {"extra": [], "batch_size": 512}}, dd,
                      autocast_for(CPU, False), None, 1).context("pgd", 1)
    x = ctx.pixels(data.test.x)
    grad_fn = lambda q, t: attacks._loss_grad(model, ctx, q, t)  # noqa: E731
    start = (torch.rand(x.shape, generator=ctx.generator) * 2 - 1) * 8 / 255
    adv = attacks.pgd(grad_fn, x, data.test.y, 8 / 255, 2 / 255, 5, True, start)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


# -------------------------------------------------------------------------------------------- corruptions
def _images(rgb: bool, n=16, seed=0, size=16, detail=4) -> torch.Tensor:
    """Test images on the 1/255 grid: digits (grey 8x8) or random colour images (3 x size x size) with
    ``size / detail`` random values per side, bilinearly upsampled (detail 1: pixel noise)."""
    if not rgb:
        return _digits().test.x[:n].float() / 255.0
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, size // detail, size // detail), generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("name", list(C.PARAMS))  # the filter corruptions; the others: test_cifar_c.py
def test_corruption_identity_and_severity_zero(name):
    for rgb in (False, True):
        if not C.applies(name, 3 if rgb else 1):
            continue
        x = _images(rgb)
        assert torch.equal(C.apply(x, name, 0), x)
        out = C.quantize(C.corrupt(x, name, C.IDENTITY[name], torch.Generator().manual_seed(0)))
        if name == "jpeg_compression":  # quality 100: quantization steps of 1, only DCT rounding remains;
            if rgb:  # colour images keep libjpeg's 4:2:0 chroma subsampling (as PIL): no identity there
                continue
            assert (out - x).abs().max() <= 2 / 255 + 1e-6 and (out - x).abs().mean() < 0.5 / 255
        else:
            assert torch.equal(out, x), name


@pytest.mark.parametrize("name", [c for c in C.PARAMS if c != "saturate"])
def test_corruption_severities_are_monotone(name):
    params = C.PARAMS[name]
    key = [p[0] if isinstance(p, tuple) else p for p in params]
    if name in ("shot_noise", "contrast", "jpeg_compression", "pixelate"):  # smaller parameter = stronger
        assert key == sorted(key, reverse=True)
    else:
        assert key == sorted(key)
    for rgb in (False, True):
        if name == "pixelate" and not rgb:
            continue  # on 8x8 images severities 4 and 5 (6 and 5 pixels) alias differently: not monotone
        # CIFAR-sized detailed images (on very smooth images pixelate's damage is not monotone either:
        # how much a box resampling to int(32 c) pixels loses depends on aliasing, not only on c)
        x = _images(rgb, n=12, size=32, detail=1)
        dist = [(C.apply(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean().item()
                for s in range(6)]
        assert dist[0] == 0 and all(a <= b + 1e-7 for a, b in zip(dist, dist[1:])), (name, rgb, dist)


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = _images(True)
    for sigma in C.PARAMS["gaussian_blur"]:
        ref = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        got = C.corrupt(x, "gaussian_blur", sigma).double().numpy()
        assert np.abs(got - ref).max() < 1e-5


def test_defocus_kernel_is_a_normalized_disk():
    for radius, blur in C.PARAMS["defocus_blur"]:
        k = C.disk_kernel(radius, blur)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
        r = k.shape[0] // 2
        assert r <= math.floor(radius) + 1  # the disk's support, widened by the 3x3 anti-aliasing blur


def test_pixelate_matches_pil_box_resize():
    from PIL import Image

    x = _images(True, n=4)
    for c in C.PARAMS["pixelate"]:
        got = C.corrupt(x, "pixelate", c)
        for i in range(len(x)):
            img = Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            small = img.resize((int(16 * c), int(16 * c)), Image.BOX).resize((16, 16), Image.BOX)
            ref = torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255
            assert (got[i] - ref).abs().max() <= 1 / 255 + 1e-6


def test_jpeg_is_close_to_pil():
    import io

    from PIL import Image

    x = _images(True, n=8)
    for q in C.PARAMS["jpeg_compression"]:
        got = C.corrupt(x, "jpeg_compression", q)
        diffs = []
        for i in range(len(x)):
            buf = io.BytesIO()
            Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=q)
            ref = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255
            diffs.append((got[i] - ref).abs())
        d = torch.stack(diffs)
        # not bit-exact: libjpeg's integer DCT can round a coefficient to the next quantization step
        assert d.mean() < 1.5 / 255 and d.max() <= 32 / 255, (q, d.mean() * 255, d.max() * 255)
        assert (got - x).abs().mean() > 0  # the compression does change the images


def test_released_cifar_c_files_are_read_from_path(tmp_path):
    """A CIFAR-C-like folder (HWC uint8, severities stacked) holding the clean test images at every severity
    must give exactly the clean accuracy; images made black give the accuracy of a black image."""
    data = _digits()
    model = _fitted_linear(data)
    hwc = data.test.x.permute(0, 2, 3, 1).numpy()
    np.save(tmp_path / "contrast.npy", np.concatenate([hwc] * 5))
    np.save(tmp_path / "fog.npy", np.zeros_like(np.concatenate([hwc] * 5)))
    np.save(tmp_path / "labels.npy", np.concatenate([data.test.y.numpy()] * 5))
    with torch.no_grad():
        dd = DeviceData(data, CPU, 0)
        clean = (model(dd.normalize(data.test.x)).argmax(1) == data.test.y).double().mean().item()
        black = (model(dd.normalize(torch.zeros_like(data.test.x))).argmax(1) == data.test.y).double().mean().item()
    out, _ = _run_eval(model, data, [{"name": "corruptions", "path": str(tmp_path), "corruptions": ["contrast"]}])
    assert out["test_corruption_contrast"] == pytest.approx(clean)
    assert out["test_corruption_accuracy"] == pytest.approx(clean)
    out, _ = _run_eval(model, data, [{"name": "corruptions", "path": str(tmp_path),
                                      "corruptions": ["contrast", "fog"]}])
    assert out["test_corruption_accuracy"] == pytest.approx((clean + black) / 2)
    assert out["test_corruption_error"] == pytest.approx(1 - (clean + black) / 2)
    assert math.isnan(out.get("test_corruption_gaussian_noise", math.nan))


# ------------------------------------------------------------------------------------------- OOD, calibration
def test_ood_against_the_same_test_set_is_chance_and_noise_is_easy():
    data = _digits()
    model = _fitted_linear(data)
    out, _ = _run_eval(model, data, [{"name": "ood", "dataset": "digits"}])  # the very same test images
    assert out["test_ood_msp_auroc"] == pytest.approx(0.5) and out["test_ood_energy_auroc"] == pytest.approx(0.5)
    assert out["test_ood_msp_fpr95"] >= 0.95
    out, _ = _run_eval(model, data, [{"name": "ood", "dataset": "uniform_noise"}])
    assert set(out) == {f"test_{m.name}" for m in REGISTRY.get("evaluators", "ood").metrics}
    assert all(0 <= v <= 1 for v in out.values())
    with pytest.raises(Exception, match=r"inputs \(10,\) \(torch.float32\).*\(1, 8, 8\).*must match"):
        _run_eval(model, data, [{"name": "ood", "dataset": "diabetes"}])  # checked before any training


def test_calibration_metrics_and_artifact(tmp_path):
    import json

    from mixcli.metrics import classification_metrics

    data = _digits()
    model = _fitted_linear(data)
    out, dd = _run_eval(model, data, [{"name": "calibration"}], artifacts=tmp_path)
    with torch.no_grad():
        zv = model(dd.normalize(dd.splits["val"].x)).double().numpy()
        zt = model(dd.normalize(dd.splits["test"].x)).double().numpy()
    t = fit_temperature(zv, dd.splits["val"].y.numpy())
    ref = classification_metrics(zt / t, dd.splits["test"].y.numpy())
    assert out["test_ts_ece"] == pytest.approx(ref["ece"], abs=1e-6)
    assert out["test_ts_nll"] == pytest.approx(ref["nll"], abs=1e-6)
    doc = json.loads((tmp_path / "calibration.json").read_text())
    assert doc["temperature"] == pytest.approx(t) and sum(doc["after"]["count"]) == len(data.test)
    with pytest.raises(Exception, match="validation split"):
        _run_eval(model, _digits(val_size=0), [{"name": "calibration"}])


# ------------------------------------------------------------------------------------------- state untouched
def test_evaluators_leave_model_and_rngs_untouched(tmp_path):
    data = _digits()
    torch.manual_seed(0)
    model = REGISTRY.get("models", "cnn")(data.input_shape, 10, width=4)
    model.train()
    model.stages[1].eval()  # a mixed state must come back exactly as well
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    dd = DeviceData(data, CPU, 0)
    np.random.seed(3)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), dd.generator.get_state())
    cfg = {"task": "classification", "seed": 0, "eval": {"batch_size": 128, "extra_every": None, "extra": [
        {"name": "fgsm"}, {"name": "pgd", "steps": 2},
        {"name": "corruptions", "severities": [5], "corruptions": ["gaussian_noise", "contrast"]},
        {"name": "ood"}, {"name": "calibration"}]}}
    out = Evaluations(cfg, dd, autocast_for(CPU, False), tmp_path, 1).after_eval(model, 1)
    assert len(out) > 10
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(states[0], torch.get_rng_state()) and np.array_equal(states[1], np.random.get_state()[1])
    assert torch.equal(states[2], dd.generator.get_state())


WITH_EXTRA = TINY.replace("method: erm", "method: {name: mixup, alpha: 1.0}") + """\
eval:
  extra_every: 1
  extra: [fgsm, {name: pgd, steps: 1}, {name: ood, dataset: gaussian_noise}, calibration,
          {name: corruptions, severities: [3], corruptions: [contrast, impulse_noise]}]
"""


def test_a_run_with_evaluators_trains_identically_and_resumes_identically(cli, write, tmp_path, monkeypatch):
    plain = write(WITH_EXTRA.split("eval:")[0], "plain.yaml")
    extra = write(WITH_EXTRA, "extra.yaml")
    assert cli("run", plain, "--out", tmp_path / "plain", "--device", "cpu")[0] == 0
    assert cli("run", extra, "--out", tmp_path / "full", "--device", "cpu")[0] == 0
    a = pd.read_parquet(tmp_path / "plain" / "epochs")
    b = pd.read_parquet(tmp_path / "full" / "epochs")
    for col in ("train_loss", "lr", "test_accuracy", "val_nll"):
        assert a[col].tolist() == b[col].tolist()  # evaluating changed nothing in training
    assert a["test_fgsm_accuracy"].isna().all() and b["test_fgsm_accuracy"].notna().all()
    assert list(a.columns) == list(b.columns)  # one schema with and without evaluators

    real = engine.evaluate
    calls = {"n": 0}

    def crash_in_epoch_3(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(engine, "evaluate", crash_in_epoch_3)
    assert cli("run", extra, "--out", tmp_path / "cut", "--device", "cpu")[0] == 130
    monkeypatch.setattr(engine, "evaluate", real)
    assert cli("run", extra, "--out", tmp_path / "cut", "--device", "cpu")[0] == 0
    cut = pd.read_parquet(tmp_path / "cut" / "epochs").drop(columns="time_s")
    pd.testing.assert_frame_equal(b.drop(columns="time_s"), cut)

    runs = pd.read_parquet(tmp_path / "full" / "runs")
    assert runs["final_test_pgd_accuracy"].iloc[0] == b["test_pgd_accuracy"].iloc[-1]
    code, text = cli("compare", tmp_path / "full", "--metric", "pgd_accuracy", "--metric", "ood_msp_fpr95",
                     "--format", "markdown")
    assert code == 0 and "pgd_accuracy % ↑" in text and "ood_msp_fpr95 % ↓" in text
    code, text = cli("curves", tmp_path / "full", "--metric", "fgsm_accuracy")
    assert code == 0 and "fgsm_accuracy" in text

    # the reliability diagram of the calibration evaluator's bins
    png = tmp_path / "rel.png"
    code, text = cli("reliability", tmp_path / "full", "--png", png)
    assert code == 0 and "ECE % after T" in text and png.stat().st_size > 10_000
    from PIL import Image
    assert Image.open(png).size[0] > 300
    ece = 100 * runs["final_test_ece"].iloc[0]
    assert f"{ece:.2f}" in text  # the pooled bins of one run reproduce its ECE
    code, text = cli("compare", tmp_path / "plain", "--metric", "fgsm_accuracy")
    assert code == 2 and "fgsm_accuracy: not recorded on test at the selected epochs" in " ".join(text.split())
    code, text = cli("reliability", tmp_path / "plain")
    assert code == 2 and "add 'calibration' to eval.extra" in " ".join(text.split())


# ------------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("extra, needle", [
    ("[fgms]", "eval.extra[0]: unknown evaluator 'fgms' (did you mean 'fgsm'?)"),
    ("[{name: pgd, eps: -1}]", "eval.extra[0]: evaluator 'pgd': eps must be >= 0, got -1"),
    ("[{name: pgd, stpes: 3}]", "eval.extra[0].stpes: unknown option 'stpes' for evaluator 'pgd'"),
    ("[fgsm, {name: fgsm, eps: 4}]", "eval.extra[1]: evaluator 'fgsm' is listed twice"),
    ("[{name: corruptions, corruptions: [fogg]}]", "unknown corruption 'fogg'"),
    ("[{name: ood, dataset: svhm}]", "unknown dataset 'svhm'"),
    ("fgsm", "eval.extra: expected a list"),
])
def test_bad_evaluator_entries_are_one_line_errors(cli, write, extra, needle):
    p = write(TINY + f"eval:\n  extra: {extra}\n")
    for cmd in ("validate", "run"):
        code, text = cli(cmd, p, "--device", "cpu") if cmd == "run" else cli(cmd, p)
        assert code == 2 and needle in " ".join(text.split()), text
        assert "Traceback" not in text and f"{p}:" in text


def test_extra_every_must_be_a_multiple_of_every(cli, write):
    p = write(TINY + "eval:\n  every: 2\n  extra_every: 3\n  extra: [fgsm]\n")
    code, text = cli("validate", p)
    assert code == 2 and "eval.extra_every: expected a multiple of eval.every (2)" in " ".join(text.split())


def test_evaluator_metrics_are_declared_with_directions():
    metrics = all_metrics()
    assert metrics["fgsm_accuracy"].higher_is_better and not metrics["ood_energy_fpr95"].higher_is_better
    assert not metrics["ts_ece"].higher_is_better and metrics["corruption_accuracy"].percent
    from mixcli.results.store import EPOCH_COLUMNS, RUN_COLUMNS
    assert "test_pgd_accuracy" in EPOCH_COLUMNS and "best_test_ood_msp_auroc" in RUN_COLUMNS


def test_a_metric_name_clash_is_reported():
    from mixcli.api import Evaluator, metric
    from mixcli.metrics import metric_clashes

    class Clashing(Evaluator):
        metrics = (metric("accuracy", True),)

    class Stealing(Evaluator):
        metrics = (metric("fgsm_accuracy", True),)

    class Silent(Evaluator):
        pass

    assert "'accuracy', which is a built-in metric" in metric_clashes("mine", Clashing)
    assert "already declared by 'fgsm'" in metric_clashes("mine", Stealing)
    assert "declares no metrics" in metric_clashes("mine", Silent)
    assert metric_clashes("fgsm", REGISTRY.get("evaluators", "fgsm")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_run_in_bf16_autocast_on_cuda_and_leave_the_cuda_rng_alone():
    dev = torch.device("cuda")
    data = _digits()
    model = REGISTRY.get("models", "cnn")(data.input_shape, 10, width=8).to(dev)
    model = model.to(memory_format=torch.channels_last).eval()
    dd = DeviceData(data, dev, 0)
    cfg = {"task": "classification", "seed": 0, "eval": {"batch_size": 128, "extra_every": None, "extra": [
        {"name": "fgsm", "eps": 8.0}, {"name": "pgd", "eps": 8.0, "steps": 3},
        {"name": "corruptions", "corruptions": [c for c in C.STANDARD if c != "frost"]},  # no frost pictures
        {"name": "ood"}, {"name": "calibration"}]}}
    cuda_rng = torch.cuda.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = Evaluations(cfg, dd, autocast_for(dev, True), None, 1).after_eval(model, 1)
    assert 0 <= out["test_pgd_accuracy"] <= out["test_fgsm_accuracy"] + 0.05 and 0 <= out["test_ts_ece"] <= 1
    assert torch.equal(cuda_rng, torch.cuda.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_evaluator_that_cannot_run_fails_before_training(cli, write, tmp_path):
    p = write(TINY.replace("dataset: {name: digits}", "dataset: {name: digits, val_size: 0}")
              + "eval:\n  extra: [calibration]\n")
    code, text = cli("run", p, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "calibration fits the temperature on the validation split" in " ".join(text.split())
    assert not (tmp_path / "out" / "epochs").exists() or not list((tmp_path / "out" / "epochs").glob("*.parquet"))
