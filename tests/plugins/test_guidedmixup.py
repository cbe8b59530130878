"""GuidedMixup against a port of its reference code path (3neutronstar/GuidedMixup ``main.py`` /
``mixup.py`` / ``pairing.pyx`` / ``spectral_residual.py``, written here with the reference's own statements
and torchvision's transforms), on random tensors; the pairing's invariants, the mixing probability, the clean
loss, the refusals, and a tiny run of each variant."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mixcli.api import Batch, PluginError
from mixcli.mixing.saliency import gaussian_blur, greedy_cycle_pairing, spectral_residual
from mixcli_plugins.methods.guidedmixup import GuidedMixup
from mixcli_plugins.models.cnn import CNN
from test_methods_dynamic import Capture, make_ctx

TF = pytest.importorskip("torchvision.transforms.functional")
transforms = pytest.importorskip("torchvision.transforms")


# -------------------------------------------------------------------------------- the reference, ported
def ref_onecycle_cover(distance_matrix):
    """pairing.pyx ``onecycle_cover`` (the Cython loop in Python; it writes into its argument)."""
    sorted_indices = np.zeros(distance_matrix.shape[0], dtype=np.int32)
    np.fill_diagonal(distance_matrix, -np.inf)
    max_idx = np.argmax(distance_matrix)
    row, col = max_idx // distance_matrix.shape[0], max_idx % distance_matrix.shape[0]
    first_row = copy.deepcopy(row)
    sorted_indices[row] = col
    distance_matrix[:, row] = -np.inf
    idx = 0
    while idx < distance_matrix.shape[0] - 2:
        idx += 1
        row = col
        col = np.argmax(distance_matrix[row])
        sorted_indices[row] = col
        distance_matrix[:, row] = -np.inf
    sorted_indices[col] = first_row
    return sorted_indices


def ref_distance_l2(a, b):
    ra = a.view(a.shape[0], -1).unsqueeze(1)
    rb = b.view(b.shape[0], -1).unsqueeze(0)
    return ((ra - rb).norm(dim=-1)).view(a.shape[0], b.shape[0])


class RefSpectralResidual:
    """spectral_residual.py ``SpectralResidual`` (device cpu)."""

    def __init__(self, blur=7, sigma=3, kernel_size=3):
        self.boxfilter = nn.Conv2d(1, 1, kernel_size, bias=False, padding=int((kernel_size - 1) / 2),
                                   padding_mode='replicate')
        self.boxfilter.weight = nn.Parameter(torch.ones((1, 1, kernel_size, kernel_size), dtype=torch.float)
                                             / float(kernel_size * kernel_size), requires_grad=False)
        self.to_gray = transforms.Compose([transforms.Grayscale(num_output_channels=1)])
        self.blur = transforms.GaussianBlur((blur, blur), (sigma, sigma))
        self.eps = 1e-10
        self.resize = transforms.Resize((128, 128))

    def transform_saliency_map(self, values):
        values = self.to_gray(values)
        if values.shape[2] > 128:
            values = self.resize(values)
        freq = torch.fft.fft2(values)
        mag = (freq.real ** 2 + freq.imag ** 2 + self.eps).sqrt()
        spectral_residual = (mag.log() - self.boxfilter(mag.log())).exp()
        freq.real = freq.real * spectral_residual / mag
        freq.imag = freq.imag * spectral_residual / mag
        saliency_map = torch.fft.ifft2(freq)
        saliency_map.squeeze_(1)
        return saliency_map

    def transform_spectral_residual(self, values):
        with torch.no_grad():
            saliency_map = self.transform_saliency_map(values)
            spectral_residual = (saliency_map.real ** 2 + saliency_map.imag ** 2).sqrt()
            spectral_residual = self.blur(spectral_residual)
            if values.shape[2] > 128:
                spectral_residual = TF.resize(spectral_residual, size=(values.shape[2], values.shape[3]))
            spectral_residual.squeeze_(1)
        return spectral_residual


def ref_guided_mix(out, target_reweighted, grad):
    """mixup.py ``mixup_process`` with ``guided`` and the greedy pairing as the paper (``onecycle_cover``)."""
    sc_a = TF.gaussian_blur(grad, (7, 7), (3, 3))
    sc_a /= (sc_a).sum(dim=[-1, -2], keepdim=True)
    indices = ref_onecycle_cover(ref_distance_l2(sc_a, sc_a).numpy())
    out_b = out[indices]
    sc_b = sc_a[indices]
    norm_sc_a = torch.div(sc_a, (sc_a + sc_b).detach())
    ratio = norm_sc_a.mean(dim=[-1, -2]).unsqueeze(-1)
    mask_a = torch.stack([norm_sc_a] * out.shape[1], dim=1)
    out = mask_a * out + (1 - mask_a) * out_b
    target = target_reweighted * ratio + target_reweighted[indices] * (1. - ratio)
    return out, target, indices


def ref_ap_saliency(model, x, y, k, clean_lam=0.0):
    """main.py's saliency: the model stays in train mode; ``clean_lam`` > 0 scales the loss by 2 clean_lam / K."""
    model.train()
    input_var = x.clone().requires_grad_(True)
    output = model(input_var)
    loss_batch = F.cross_entropy(output, y, reduction="none")
    if clean_lam > 0:
        loss_batch = 2 * clean_lam * loss_batch / k
    loss_batch.mean(0).backward(retain_graph=True)
    return torch.sqrt(torch.mean(input_var.grad ** 2, dim=1)), loss_batch.mean(0)


def capture_step(method, model, x, y, k, seed=0):
    ctx = make_ctx(torch.zeros(x.shape, dtype=torch.uint8), y, k, model=model, seed=seed)
    method.setup(ctx)
    seen = []
    h = model.register_forward_hook(lambda mod, inp, o: seen.append(inp[0].detach()))
    out = method(model, Batch(x, y, torch.arange(x.shape[0])), ctx)
    h.remove()
    return out, seen


# ------------------------------------------------------------------------------------------------ tests
def test_blur_and_spectral_residual_equal_torchvision_and_the_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(5, 16, 16, generator=g)
    torch.testing.assert_close(gaussian_blur(s, 7, 3.0), TF.gaussian_blur(s, (7, 7), (3, 3)))
    ref = RefSpectralResidual()
    for shape in ((4, 3, 32, 32), (3, 1, 8, 8), (2, 3, 140, 140)):  # RGB, grey, and the >128 resize path
        x = torch.randn(*shape, generator=g)
        torch.testing.assert_close(spectral_residual(x), ref.transform_spectral_residual(x), rtol=1e-4, atol=1e-6)


def test_greedy_pairing_is_one_cycle_equal_to_the_reference():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 32):
        for _ in range(5):
            d = rng.random((n, n)).astype(np.float32)
            d = d + d.T
            got = greedy_cycle_pairing(d)
            np.testing.assert_array_equal(got, ref_onecycle_cover(d.copy()))
            assert sorted(got.tolist()) == list(range(n)) and (got != np.arange(n)).all()
            seen, i = {0}, int(got[0])
            while i != 0:  # a single cycle through every row
                seen.add(i)
                i = int(got[i])
            assert len(seen) == n
            r, c = divmod(int(np.argmax(np.where(np.eye(n, dtype=bool), -np.inf, d))), n)
            assert got[r] == c  # it starts at the farthest pair


@pytest.mark.parametrize("c", [3, 1])
def test_ap_step_equals_the_reference(c):
    torch.manual_seed(c)
    b, k = 12, 4
    x, y = torch.randn(b, c, 16, 16), torch.arange(b) % k
    model = CNN((c, 16, 16), k, width=4)
    ref_model = copy.deepcopy(model)
    out, seen = capture_step(GuidedMixup(mix_prob=1.0, criterion="bce_softmax"), model, x, y, k)
    sal, _ = ref_ap_saliency(ref_model, x, y, k)
    want_x, want_t, idx = ref_guided_mix(x, F.one_hot(y, k).float(), sal)
    torch.testing.assert_close(seen[-1], want_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.y_b, y[torch.as_tensor(idx, dtype=torch.long)])
    got_t = out.lam[:, None] * F.one_hot(out.y_a, k) + (1 - out.lam[:, None]) * F.one_hot(out.y_b, k)
    torch.testing.assert_close(got_t, want_t)
    # the reference's loss, BCE of the softmax
    torch.testing.assert_close(out.loss, nn.BCELoss()(torch.softmax(ref_model(want_x), 1), want_t), rtol=1e-4,
                               atol=1e-6)


def test_sr_step_equals_the_reference():
    torch.manual_seed(3)
    b, k = 10, 5
    x, y = torch.randn(b, 3, 32, 32), torch.arange(b) % k
    out, seen = capture_step(GuidedMixup(saliency="sr", mix_prob=1.0, criterion="soft_ce"), Capture(k), x, y, k)
    assert out.loss is None  # soft_ce: the run's loss plugin
    sal = RefSpectralResidual().transform_spectral_residual(x)
    want_x, want_t, idx = ref_guided_mix(x, F.one_hot(y, k).float(), sal)
    torch.testing.assert_close(seen[-1], want_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.y_b, y[torch.as_tensor(idx, dtype=torch.long)])
    assert ((out.lam > 0) & (out.lam < 1)).all()


@pytest.mark.parametrize("criterion", ["bce_softmax", "soft_ce"])
def test_clean_loss_gives_the_references_gradients(criterion):
    """bce_softmax: the reference's step exactly; soft_ce: the cross-entropy with the clean term scaled by K
    (2 clean_lam CE, the same ratio to the mixed loss)."""
    torch.manual_seed(4)
    b, k = 12, 4
    x, y = torch.randn(b, 3, 16, 16), torch.arange(b) % k
    model = CNN((3, 16, 16), k, width=4)
    ref_model = copy.deepcopy(model)
    out, _ = capture_step(GuidedMixup(mix_prob=1.0, clean_lam=0.5, criterion=criterion), model, x, y, k)
    model.zero_grad()
    out.loss.backward()
    ref_model.zero_grad()
    sal, clean = ref_ap_saliency(ref_model, x, y, k, clean_lam=0.5)
    want_x, want_t, _ = ref_guided_mix(x, F.one_hot(y, k).float(), sal)
    if criterion == "bce_softmax":
        loss = nn.BCELoss()(torch.softmax(ref_model(want_x), 1), want_t)
    else:
        loss = -(want_t * F.log_softmax(ref_model(want_x), 1)).sum(1).mean() + (k - 1) * clean
    loss.backward()
    torch.testing.assert_close(out.loss.detach(), (loss + clean).detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_mix_prob_and_random_pairing():
    b, k = 8, 4
    x, y = torch.rand(b, 1, 8, 8), torch.arange(b) % k
    m = GuidedMixup(saliency="sr", criterion="soft_ce")  # mix_prob 0.5 by default for sr
    assert m.mix_prob == 0.5 and GuidedMixup().mix_prob == 0.8
    ctx = make_ctx(torch.zeros(b, 1, 8, 8, dtype=torch.uint8), y, k, seed=1)
    m.setup(ctx)
    mixed = [bool((m(Capture(k), Batch(x, y, torch.arange(b)), ctx).lam < 1).any()) for _ in range(40)]
    draws = np.random.default_rng(1).random(40)  # the greedy sr steps draw nothing else
    assert mixed == (draws <= 0.5).tolist() and 10 < sum(mixed) < 30  # the reference: clean when p < rand()
    r = GuidedMixup(saliency="sr", pairing="random", mix_prob=1.0, criterion="soft_ce")
    ctx = make_ctx(torch.zeros(b, 1, 8, 8, dtype=torch.uint8), y, k, seed=2)
    r.setup(ctx)
    out = r(Capture(k), Batch(x, y, torch.arange(b)), ctx)
    rng = np.random.default_rng(2)
    rng.random()
    torch.testing.assert_close(out.y_b, y[torch.as_tensor(rng.permutation(b))])


def test_refusals_are_one_clear_line(cli, write):
    for kw, want in (({"saliency": "grad"}, "saliency must be one of ap, sr"),
                     ({"pairing": "optimal"}, "pairing must be one of greedy, random"),
                     ({"mix_prob": 1.5}, "mix_prob must be in [0, 1]"),
                     ({"blur": 4}, "blur must be 0 (none) or an odd kernel size"),
                     ({"saliency": "sr", "clean_lam": 1.0}, "clean_lam needs saliency: ap")):
        with pytest.raises(PluginError, match=want.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            GuidedMixup(**kw)
    with pytest.raises(PluginError, match="saliency: sr needs 1- or 3-channel images"):
        GuidedMixup(saliency="sr").check_input((2, 16, 16))
    for method, data, want in (
            ("{name: guidedmixup, blur: 17}", "{name: digits}", "a blur of size 17 needs images larger than 8x8"),
            ("{name: guidedmixup, criterion: bce}", "{name: digits}", "criterion must be one of"),
            ("guidedmixup", "{name: diabetes}", "classification"),
    ):
        code, text = cli("validate", write(f"""\
            name: bad
            task: {"regression" if "diabetes" in data else "classification"}
            dataset: {data}
            model: {{name: mlp, widths: [8]}}
            method: {method}
            seeds: [0]
            """))
        assert code == 2 and want in " ".join(text.split()) and "Traceback" not in text, text


@pytest.mark.parametrize("opts", ["{name: guidedmixup}", "{name: guidedmixup, saliency: sr}"])
def test_a_tiny_run_on_digits(cli, write, tmp_path, opts):
    code, text = cli("run", write(f"""\
        name: guided
        dataset: {{name: digits, fraction: 0.1}}
        model: {{name: cnn, width: 4}}
        method: {opts}
        train: {{epochs: 1, batch_size: 64, optimizer: {{name: sgd, lr: 0.05}}}}
        seeds: [0]
        """), "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    runs = pd.read_parquet(tmp_path / "r" / "runs")
    assert runs.iloc[0]["status"] == "finished" and 0 <= runs.iloc[0]["final_test_accuracy"] <= 1


@pytest.mark.parametrize("opts, syncs", [({"saliency": "ap"}, 1), ({"saliency": "sr", "pairing": "random"}, 0)])
def test_host_reads_per_step(opts, syncs, tmp_path):
    """The greedy pairing reads the (B, B) distances once per step; random pairing never reads the device."""
    from mixcli.api import DataBundle, Split
    from mixcli.training.hostsync import engine_steps

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(64) % 10
    data = DataBundle("classification", Split(x, y), Split(x[:16].clone(), y[:16].clone()), num_classes=10,
                      mean=(0.3,), std=(0.3,), augment=True, pad=1, flip=True)
    c = engine_steps("guidedmixup", {**opts, "mix_prob": 1.0}, data, torch.device("cpu"), batch_size=32,
                     warmup=1, steps=3, artifacts_dir=tmp_path)
    assert c.syncs == 3 * syncs, c.where()


def test_the_default_criterion_is_the_official_codes():
    """Both follow their official code by default (the BCE of the softmax); soft_ce is the option."""
    from mixcli_plugins.methods.comixup import CoMixup

    assert GuidedMixup().criterion == "bce_softmax" and CoMixup().criterion == "bce_softmax"
