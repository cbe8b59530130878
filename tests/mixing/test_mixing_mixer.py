"""``mixcli.mixing.create`` and ``Mixer``: a method in a user's own loop, step for step what the engine
computes for the same seed (checked against ``mixcli run`` on digits), resuming, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mixcli.api import PluginError
from mixcli.data.device import DeviceData
from mixcli.mixing import Mixer, create
from mixcli.registry import REGISTRY

EXP = """\
name: parity
dataset: {{name: digits, fraction: 0.3, augment: true}}
model: {{name: cnn, width: 8}}
method: {method}
train:
  epochs: 2
  batch_size: 64
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}}
  schedule: constant
  precision: fp32
seeds: [3]
"""

CASES = {
    "mixup": {"alpha": 1.0, "cutmix_alpha": 1.0, "mode": "elem"},
    "cutmix": {"alpha": 1.0},
    "manifold_mixup": {"alpha": 2.0, "partners": "dataset"},
    "saliencymix": {"alpha": 1.0},
    "automix": {"alpha": 2.0},
    "snapmix": {},
}


def engine_run(cli, write, tmp_path, name, opts):
    method = json.dumps({"name": name, **opts})
    p = write(EXP.format(method=method))
    out = tmp_path / "out"
    code, text = cli("run", p, "--out", out, "--device", "cpu")
    assert code == 0, text
    (ckpt,) = list(Path(out).glob("jobs/*/checkpoint.pt"))
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def own_loop(name, opts, seed=3, epochs=2, batch_size=64, stop_after=None, mixer_state=None, state=None):
    """The loop a user writes with Mixer, on the engine's data path and model."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    data = REGISTRY.get("datasets", "digits")(fraction=0.3, augment=True).load()
    dd = DeviceData(data, torch.device("cpu"), seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = REGISTRY.get("models", "cnn")(data.input_shape, data.out_dim, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    mixer = Mixer(name, model, data.num_classes, seed=seed, train=dd.train, fetch=dd.fetch, mean=data.mean,
                  std=data.std, epochs=epochs, optimizer=opt, **opts)
    first = 1
    if state is not None:  # resume: everything the engine's checkpoint holds, and the mixer's state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["torch_rng"])
        dd.generator.set_state(state["data_rng"])
        mixer.load_state_dict(state["mixer"])
        first = state["epoch"] + 1
    losses = []
    for epoch in range(first, epochs + 1):
        mixer.start_epoch(epoch)
        model.train()
        for batch in dd.train_batches(batch_size):
            out = mixer(batch.x, batch.y, index=batch.index)
            loss = mixer.loss(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if stop_after == epoch:
            return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(), "data_rng": dd.generator.get_state(),
                    "mixer": mixer.state_dict(), "epoch": epoch}
    return model, mixer, losses


@pytest.mark.parametrize("name", list(CASES))
def test_mixer_reproduces_the_engine_step_for_step(cli, write, tmp_path, name):
    ckpt = engine_run(cli, write, tmp_path, name, CASES[name])
    model, mixer, losses = own_loop(name, CASES[name])
    ours = model.state_dict()
    assert set(ours) == set(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert torch.equal(ours[k], v), k  # bit-identical weights after every step of 2 epochs
    assert json.loads(ckpt["method_rng"]) == mixer.state_dict()["rng"]
    assert ckpt["step"] == mixer.state_dict()["step"] == len(losses)
    rows = json.loads(ckpt["rows"])
    steps = len(losses) // 2
    assert rows[-1]["train_loss"] == pytest.approx(sum(losses[steps:]) / steps, rel=1e-5)


@pytest.mark.parametrize("name", ["mixup", "automix"])
def test_mixer_state_dict_resumes_exactly(name):
    model, _, losses = own_loop(name, CASES[name])
    state = own_loop(name, CASES[name], stop_after=1)
    resumed, _, tail = own_loop(name, CASES[name], state=state)
    assert tail == losses[len(losses) - len(tail):]
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------------ create
def test_create_builds_every_registered_method_with_its_defaults():
    from mixcli.api import NEEDS
    for name in REGISTRY.names("methods"):
        m = create(name)
        assert m.name == name and isinstance(m.requires(), frozenset) and m.requires() <= set(NEEDS)


@pytest.mark.parametrize("call, message", [
    (lambda: create("mixupp"), "did you mean 'mixup'"),
    (lambda: create("mixup", alpah=1.0), "unknown option 'alpah' for method 'mixup' (did you mean 'alpha'?)"),
    (lambda: create("mixup", alpha="big"), "method 'mixup': alpha must be a number, got 'big'"),
    (lambda: create("mixup", alpha=float("nan")), "finite"),
    (lambda: create("cutmix", alpha=-1.0), "method 'cutmix': alpha must be > 0, got -1.0"),
    (lambda: create("mixup", off_after_epoch=3), "an option of Mixer"),
    (lambda: create(3), "must be a method name"),
])
def test_create_refuses_bad_input_in_one_line(call, message):
    with pytest.raises(PluginError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ Mixer errors
def tiny_cnn():
    return REGISTRY.get("models", "cnn")((3, 8, 8), 4, width=4)


@pytest.mark.parametrize("make, message", [
    (lambda: Mixer("saliencymix", tiny_cnn(), 4), "needs mean= and std="),
    (lambda: Mixer("automix", tiny_cnn(), 4), "needs train=(x, y), the training set; epochs="),
    (lambda: Mixer("selmix", tiny_cnn(), 4), "val=(x, y)"),
    (lambda: Mixer("mixup", tiny_cnn(), 4, partners="dataset"), "needs train=(x, y)"),
    (lambda: Mixer("mixup", tiny_cnn(), 0), "num_classes must be a positive integer"),
    (lambda: Mixer("snapmix", tiny_cnn()), "supports task classification, not regression"),
    (lambda: Mixer("mixup", "resnet", 4), "model must be a torch.nn.Module"),
    (lambda: Mixer("manifold_mixup", nn.Conv2d(3, 4, 3), 4), "Conv2d is none of the models"),
    (lambda: Mixer("mixup", tiny_cnn(), 4, seed=-1), "seed must be an integer >= 0"),
    (lambda: Mixer(create("mixup"), tiny_cnn(), 4, alpha=1.0), "options ['alpha'] are for a method name"),
])
def test_mixer_refuses_what_a_method_cannot_run_with(make, message):
    with pytest.raises(PluginError) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, x, y, message", [
    ("mixup", torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2]), "4 inputs but labels of shape (3,)"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.rand(4), "must be integer class ids"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.rand(4, 5), "soft labels have 5 columns, expected num_classes = 4"),
    ("mixup", torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 4]), "class ids must be in [0, 4), got 0..4"),
    ("mixup", torch.rand(4, 1, 1, 3, 8, 8), torch.tensor([0, 1, 2, 3]), "got 6-D shape"),
    ("cutmix", torch.rand(4, 12), torch.tensor([0, 1, 2, 3]), "needs image inputs (N, C, H, W)"),
    ("snapmix", torch.rand(4, 3, 8, 8), torch.eye(4), "reads the class ids"),
    ("mixup", torch.rand(4, 3, 8, 8).bool(), torch.tensor([0, 1, 2, 3]), "floating point or uint8"),
    ("cutmix", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]), "mixer.prepare(x)"),
    ("mixup", np.zeros((4, 3)), torch.tensor([0, 1, 2, 3]), "must be torch tensors"),
])
def test_mixer_checks_each_batch(name, x, y, message):
    mixer = Mixer(name, tiny_cnn(), 4)
    with pytest.raises(PluginError) as e:
        mixer(x, y)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_mixer_without_train_sets_up_on_the_first_batch_and_takes_soft_labels():
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    soft = torch.nn.functional.one_hot(y, 4).float()
    a, b = Mixer("cutmix", model, 4, seed=5), Mixer("cutmix", model, 4, seed=5)
    a.start_epoch(1)
    out_ids, out_soft = a(x, y), b(x, soft)
    assert torch.equal(out_ids.logits, out_soft.logits)
    assert torch.allclose(a.targets(out_ids), b.targets(out_soft))
    assert torch.allclose(a.targets(out_ids).sum(1), torch.ones(6))
    assert torch.allclose(a.loss(out_ids), b.loss(out_soft))


def test_mixer_off_after_epoch_trains_plainly():
    model = tiny_cnn().eval()
    m = Mixer("mixup", model, 4, off_after_epoch=1)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    m.start_epoch(1)
    assert (m(x, y).lam < 1).all()
    m.start_epoch(2)
    out = m(x, y)
    assert torch.equal(out.y_a, y) and torch.equal(out.lam, torch.ones(4))
    assert torch.equal(out.logits, model(x))


def test_mixer_runs_selmix_cmixup_and_regmixup_with_what_they_need():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
    m = Mixer("selmix", net, 4, seed=0, train=(x, y), val=(x[:20], y[:20]), refresh=2)
    m.start_epoch(1)
    for i in range(0, 40, 8):
        loss = m.loss(m(x[i:i + 8], y[i:i + 8], index=torch.arange(i, i + 8)))
        assert torch.isfinite(loss)
    reg = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    xr, yr = torch.randn(30, 5), torch.randn(30, 1)
    m = Mixer("cmixup", reg, task="regression", seed=0, train=(xr, yr))
    m.start_epoch(1)
    out = m(xr[:8], yr[:8], index=torch.arange(8))
    assert m.targets(out).shape == (8, 1) and torch.isfinite(m.loss(out))
    with pytest.raises(PluginError, match=r"call mixer\(x, y, index=...\)"):
        m(xr[:8], yr[:8])
    m = Mixer("regmixup", net, 4, seed=0)
    assert torch.isfinite(m.loss(m(x[:8], y[:8])))
    with pytest.raises(PluginError, match="reads the class ids"):
        m(x[:8], torch.eye(4)[y[:8]])
