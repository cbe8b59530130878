"""AutoMix's four heads (heads: reference, OpenMixup AutoMixup): which loss trains which head, the momentum
copies, the evaluator automix_heads, and heads: shared."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, PluginError
from mixcli_plugins.methods.automix import AutoMix, momentum_at
from mixcli_plugins.models.cnn import CNN

from test_methods_dynamic import make_ctx


def setup(heads="reference", lr=0.1):
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(32) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = AutoMix(lam_margin=0.0, heads=heads)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    ctx.extra["optimizer"] = opt
    m.setup(ctx)
    m.start_epoch(1, ctx)
    return m, model, ctx, opt, x8.float() / 255, y


def test_each_loss_trains_its_head_and_the_k_heads_are_momentum_copies():
    m, model, ctx, opt, x, y = setup()
    assert m.head_opt.defaults["momentum"] == 0.9 and m.head_opt.defaults["weight_decay"] == 5e-4
    w0 = m.head_mix_q.weight.detach().clone()
    assert float(w0.std()) == pytest.approx(0.01, rel=0.3) and torch.equal(m.head_mix_q.bias, torch.zeros(4))
    torch.testing.assert_close(m.head_mix_k.weight, m.head_mix_q.weight)  # the same start
    out = m(model, Batch(x, y, torch.arange(32)), ctx)
    opt.zero_grad()
    out.loss.backward()
    # head_mix_q stepped in the backward pass by the run's SGD settings at the run's lr
    assert not torch.equal(m.head_mix_q.weight, w0) and m.head_mix_q.weight.grad is None
    assert all(p.grad is None for p in m.head_mix_k.parameters())
    # the model's classifier (head_one_q) gets the clean cross-entropy only
    g = model.classifier.weight.grad.clone()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(g, model.classifier.weight.grad)
    opt.step()
    # the next step first moves head_mix_k towards head_mix_q with the encoder's momentum
    hk, hq = m.head_mix_k.weight.clone(), m.head_mix_q.weight.detach().clone()
    ctx.step = 1
    m(model, Batch(x, y, torch.arange(32)), ctx)
    mu = momentum_at(0, ctx.epochs, 0.999, 0.999999)
    torch.testing.assert_close(m.head_mix_k.weight, mu * hk + (1 - mu) * hq)


def test_head_logits_and_the_shared_variant():
    m, model, ctx, opt, x, y = setup()
    model.eval()
    out = m.head_logits(model, x)
    assert set(out) == {"mix_k", "one_k", "mix_q", "one_q"}
    torch.testing.assert_close(out["one_q"], model(x))
    torch.testing.assert_close(out["mix_q"], m.head_mix_q(model.forward_to(x, model.embed_position)))
    m.k.train()
    m.head_logits(model, x)
    assert m.k.training  # the momentum encoder's mode is restored after its test-mode forward
    s, model2, ctx2, _, x2, _ = setup("shared")
    model2.eval()
    o2 = s.head_logits(model2, x2)
    torch.testing.assert_close(o2["mix_q"], o2["one_q"])
    assert s.head_mix_q is None and "head_mix_q" not in s.state_dict()
    with pytest.raises(PluginError, match="heads must be one of reference, shared"):
        AutoMix(heads="four")


def test_reference_heads_need_the_runs_optimizer():
    x8 = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    ctx = make_ctx(x8, torch.arange(8) % 4, 4, model=CNN((1, 8, 8), 4, width=4))
    with pytest.raises(PluginError, match="needs the run's optimizer"):
        AutoMix().setup(ctx)


def test_automix_heads_evaluator_in_a_run(cli, write, tmp_path):
    code, text = cli("run", write("""\
        name: amh
        dataset: {name: digits, fraction: 0.1}
        model: {name: cnn, width: 4}
        method: {name: automix}
        train: {epochs: 1, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
        eval: {extra: [automix_heads]}
        seeds: [0]
        """), "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, text
    ep = pd.read_parquet(tmp_path / "r" / "epochs")
    row = ep.iloc[-1]
    for h in ("mix_k", "one_k", "mix_q", "one_q"):
        assert 0 <= row[f"test_automix_{h}_accuracy"] <= 1
    assert row["test_automix_one_q_accuracy"] == pytest.approx(row["test_accuracy"])
    code, text = cli("compare", tmp_path / "r", "--metric", "automix_mix_k_accuracy")
    assert code == 0 and "automix_mix_k_accuracy" in text


def test_automix_heads_without_automix_is_a_clear_error():
    from mixcli.errors import MixcliError
    from test_evaluators import _digits, _fitted_linear, _run_eval

    data = _digits()
    with pytest.raises(MixcliError, match="evaluator 'automix_heads': .*heads of a learned mixer"):
        _run_eval(_fitted_linear(data), data, [{"name": "automix_heads"}])


@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGD"])
def test_reference_heads_copy_any_run_optimizer(name):
    """The mixed head's optimizer is the run's class with the run's settings; AdamW's ``defaults`` hold a
    ``decoupled_weight_decay`` its constructor refuses, which once made automix fail with adamw."""
    x8 = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    model = CNN((1, 8, 8), 4, width=4)
    ctx = make_ctx(x8, torch.arange(8) % 4, 4, model=model)
    opt = getattr(torch.optim, name)(model.parameters(), lr=0.003, weight_decay=0.05)
    ctx.extra["optimizer"] = opt
    m = AutoMix()
    m.setup(ctx)
    assert type(m.head_opt) is type(opt)
    assert m.head_opt.defaults["lr"] == 0.003 and m.head_opt.defaults["weight_decay"] == 0.05
