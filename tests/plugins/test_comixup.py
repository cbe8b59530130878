"""Co-Mixup against a port of its reference code path (snu-mllab/Co-Mixup ``main.py`` / ``mixup.py`` /
``match.py``, written here on the CPU with the reference's own statements), on random tensors with the same
draws; its invariants, its loss and clean-input term, its refusals, and a tiny run."""
from __future__ import annotations

import copy
from math import ceil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, PluginError
from test_methods_dynamic import make_ctx

gco = pytest.importorskip("gco")

from mixcli_plugins.methods import comixup as cm  # noqa: E402
from mixcli_plugins.methods.comixup import CoMixup  # noqa: E402
from mixcli_plugins.models.cnn import CNN  # noqa: E402


# ------------------------------------------------------------------- the reference, ported (match.py, device cpu)
def ref_to_onehot(idx, n_input):
    out = torch.zeros((idx.shape[0], n_input), dtype=torch.float32)
    out.scatter_(1, idx.unsqueeze(1), 1)
    return out


def ref_obj_fn(cost_matrix, mask_onehot, beta, gamma):
    n_output, height, width, n_input = mask_onehot.shape
    mask_idx_sum = mask_onehot.reshape(n_output, height * width, n_input).sum(1)
    loss = 0
    loss += torch.sum(cost_matrix.permute(1, 2, 0).unsqueeze(0) * mask_onehot)
    loss += beta / 2 * (((mask_onehot[:, :-1, :, :] - mask_onehot[:, 1:, :, :]) ** 2).sum() +
                        ((mask_onehot[:, :, :-1, :] - mask_onehot[:, :, 1:, :]) ** 2).sum())
    loss += gamma * (torch.sum(mask_idx_sum.sum(0) ** 2) - torch.sum(mask_idx_sum ** 2))
    return loss


def ref_mix_input(mask_onehot, input_sp, target_reweighted):
    n_output, height, width, n_input = mask_onehot.shape
    _, n_class = target_reweighted.shape
    mask_onehot_im = F.interpolate(mask_onehot.permute(0, 3, 1, 2), size=input_sp.shape[-1], mode='nearest')
    output = torch.sum(mask_onehot_im.unsqueeze(2) * input_sp.unsqueeze(0), dim=1)
    mask_target = torch.matmul(mask_onehot, target_reweighted)
    target = mask_target.reshape(n_output, height * width, n_class).sum(-2)
    target /= target.sum(-1, keepdim=True)
    return output, target


def ref_resolve_label(assigned_label_total):
    n_output, n_input = assigned_label_total.shape
    add_cost = torch.zeros_like(assigned_label_total)
    dist = torch.min((assigned_label_total.unsqueeze(1) - assigned_label_total.unsqueeze(0)).abs().sum(-1),
                     torch.tensor(1.0))
    coincide = torch.triu(1. - dist, diagonal=1)
    for i1, i2 in coincide.nonzero():
        nonzeros = assigned_label_total[i1].nonzero()
        if len(nonzeros) == 1:
            continue
        else:
            add_cost[i1][nonzeros[0]] = 1.
            add_cost[i2][nonzeros[1]] = 1.
    return add_cost


def ref_graphcut_multi(cost, beta=1, algorithm='swap', n_label=0, add_idx=None):
    height, width, n_input = cost.shape
    unary = np.ascontiguousarray(cost)
    pairwise = (np.ones(shape=(n_input, n_input), dtype=np.float32) - np.eye(n_input, dtype=np.float32))
    if n_label == 2:
        pairwise[-1, :-1][add_idx] = 0.25
        pairwise[:-1, -1][add_idx] = 0.25
    elif n_label == 3:
        pairwise[-3:, :-3][:, add_idx] = np.array([[0.25, 0.25, 1], [0.25, 1, 0.25], [1, 0.25, 0.25]])
        pairwise[:-3, -3:][add_idx, :] = np.array([[0.25, 0.25, 1], [0.25, 1, 0.25], [1, 0.25, 0.25]])
    cost_v = beta * np.ones(shape=[height - 1, width], dtype=np.float32)
    cost_h = beta * np.ones(shape=[height, width - 1], dtype=np.float32)
    return gco.cut_grid_graph(unary, pairwise, cost_v, cost_h, algorithm=algorithm)


def ref_graphcut_wrapper(cost_penalty, label_count, n_input, height, width, beta, iter_idx=0):
    assigned_label = (label_count > 0)
    n_label = int(assigned_label.float().sum()) if iter_idx > 0 else 0
    if n_label == 2:
        cost_add = cost_penalty[:, :, assigned_label].mean(-1, keepdim=True) - 5e-4
        cost_penalty = torch.cat([cost_penalty, cost_add], dim=-1)
        unary = cost_penalty.cpu().numpy()
        mask_idx_np = ref_graphcut_multi(unary, beta=beta, n_label=2, add_idx=assigned_label.cpu().numpy())
        mask_idx_onehot = ref_to_onehot(torch.tensor(mask_idx_np, dtype=torch.long), n_input + 1).reshape(
            height, width, n_input + 1)
        idx_matrix = torch.zeros([1, 1, n_input])
        idx_matrix[:, :, assigned_label] = 0.5
        mask_onehot_i = mask_idx_onehot[:, :, :n_input] + mask_idx_onehot[:, :, n_input:] * idx_matrix
    elif n_label >= 3:
        soft_label = torch.tensor([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        _, indices = torch.topk(label_count, k=3)
        assigned_label = torch.zeros_like(assigned_label)
        assigned_label[indices] = True
        cost_add = torch.matmul(cost_penalty[:, :, assigned_label], soft_label) - 5e-4
        cost_penalty = torch.cat([cost_penalty, cost_add], dim=-1)
        unary = cost_penalty.cpu().numpy()
        mask_idx_np = ref_graphcut_multi(unary, beta=beta, n_label=3, add_idx=assigned_label.cpu().numpy())
        mask_idx_onehot = ref_to_onehot(torch.tensor(mask_idx_np, dtype=torch.long), n_input + 3).reshape(
            height, width, n_input + 3)
        idx_matrix = torch.zeros([3, n_input])
        idx_matrix[:, assigned_label] = soft_label
        mask_onehot_i = mask_idx_onehot[:, :, :n_input] + torch.matmul(mask_idx_onehot[:, :, n_input:], idx_matrix)
    else:
        unary = cost_penalty.cpu().numpy()
        mask_idx_np = ref_graphcut_multi(unary, beta=beta)
        mask_onehot_i = ref_to_onehot(torch.tensor(mask_idx_np, dtype=torch.long), n_input).reshape(
            height, width, n_input)
    return mask_onehot_i


def ref_get_onehot_matrix(cost_matrix, A, n_output, alpha, init, beta=0.32, gamma=1., eta=0.05, thres=0.84,
                          thres_type='hard', set_resolve=True, niter=3):
    """``get_onehot_matrix`` with its two draws given: the Dirichlet sample ``alpha`` (torch's, in the
    reference) and the initial labels ``init`` (numpy's ``random_initialize``)."""
    n_input, height, width = cost_matrix.shape
    thres = thres * height * width
    beta = beta / height / width
    gamma = gamma / height / width
    eta = eta / height / width
    add_cost = None
    alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(n_input, 1, 1)
    cost_matrix -= eta * torch.log(alpha + 1e-8)
    with torch.no_grad():
        mask_idx = torch.tensor(init)
        mask_onehot = ref_to_onehot(mask_idx.reshape(-1), n_input).reshape([n_output, height, width, n_input])
        loss_prev = ref_obj_fn(cost_matrix, mask_onehot, beta, gamma)
        penalty = ref_to_onehot(mask_idx.reshape(-1), n_input).sum(0).reshape(-1, 1, 1)
        for iter_idx in range(niter):
            for i in range(n_output):
                label_count = mask_onehot[i].reshape([height * width, n_input]).sum(0)
                penalty -= label_count.reshape(-1, 1, 1)
                if thres_type == 'hard':
                    modular_penalty = (2 * gamma * (
                        (A @ penalty.squeeze() > thres).float() * A @ penalty.squeeze())).reshape(-1, 1, 1)
                elif thres_type == 'soft':
                    modular_penalty = (2 * gamma * ((A @ penalty.squeeze() > thres).float() *
                                                    (A @ penalty.squeeze() - thres))).reshape(-1, 1, 1)
                if add_cost is not None:
                    cost_penalty = (cost_matrix + modular_penalty + gamma * add_cost[i].reshape(-1, 1, 1)).permute(1, 2, 0)
                else:
                    cost_penalty = (cost_matrix + modular_penalty).permute(1, 2, 0)
                mask_onehot[i] = ref_graphcut_wrapper(cost_penalty, label_count, n_input, height, width, beta, iter_idx)
                penalty += mask_onehot[i].reshape([height * width, n_input]).sum(0).reshape(-1, 1, 1)
            if iter_idx == niter - 2 and set_resolve:
                assigned_label_total = (mask_onehot.reshape(n_output, -1, n_input).sum(1) > 0).float()
                add_cost = ref_resolve_label(assigned_label_total)
            loss = ref_obj_fn(cost_matrix, mask_onehot, beta, gamma)
            if (loss_prev - loss).abs() / loss.abs() < 1e-6:
                break
            loss_prev = loss
    return mask_onehot


def ref_a_dist(sc):
    """main.py: the L1 distance between the most salient 8x8 windows (``distance(z_idx_2d, 'l1')``)."""
    z = F.avg_pool2d(sc, kernel_size=8, stride=1)
    z_reshape = z.reshape(sc.shape[0], -1)
    z_idx_1d = torch.argmax(z_reshape, dim=1)
    z_idx_2d = torch.zeros((sc.shape[0], 2))
    z_idx_2d[:, 0] = z_idx_1d // z.shape[-1]
    z_idx_2d[:, 1] = z_idx_1d % z.shape[-1]
    return (z_idx_2d.unsqueeze(1) - z_idx_2d.unsqueeze(0)).abs().sum(-1)


def ref_mixup_process(out, target_reweighted, sc, A_dist, rng, m_block_num=4, m_part=20, m_omega=0.001,
                      mixup_alpha=2.0, **kw):
    """mixup.py's ``mixup_process``; the Dirichlet draw and the initial labels come from ``rng`` in the
    order the plugin draws them (per partition: Dirichlet, then labels)."""
    batch_size, width = out.shape[0], out.shape[-1]
    block_size = width // m_block_num
    sc = F.avg_pool2d(sc, block_size)
    out_list, target_list = [], []
    for i in range(ceil(batch_size / m_part)):
        sc_part = sc[i * m_part:(i + 1) * m_part]
        A_dist_part = A_dist[i * m_part:(i + 1) * m_part, i * m_part:(i + 1) * m_part]
        n_input = sc_part.shape[0]
        sc_norm = sc_part / sc_part.reshape(n_input, -1).sum(1).reshape(n_input, 1, 1)
        cost_matrix = -sc_norm
        A_base = torch.eye(n_input)
        A_dist_part = A_dist_part / torch.sum(A_dist_part) * n_input
        A = (1 - m_omega) * A_base + m_omega * A_dist_part
        alpha = rng.dirichlet(mixup_alpha * np.ones(n_input))
        init = rng.integers(0, n_input, (n_input, m_block_num, m_block_num))
        mask_onehot = ref_get_onehot_matrix(cost_matrix.detach(), A, n_input, alpha, init, **kw)
        o, t = ref_mix_input(mask_onehot, out[i * m_part:(i + 1) * m_part], target_reweighted[i * m_part:(i + 1) * m_part])
        out_list.append(o)
        target_list.append(t)
    return torch.cat(out_list, dim=0), torch.cat(target_list, dim=0)


# ------------------------------------------------------------------------------------------------ tests
OPTS = dict(beta=0.32, gamma=1.0, eta=0.05, thres=0.83, set_resolve=True, niter=4)


def random_saliency(b, side, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, side, side, generator=g) ** 3  # peaked, so that outputs differ


@pytest.mark.parametrize("thres_type,seed", [("hard", 0), ("soft", 1), ("hard", 2)])
def test_labeling_mixing_and_targets_equal_the_reference_on_the_same_draws(thres_type, seed):
    b, k, side = 24, 5, 16  # two partitions (20 + 4) of a 4x4 grid on 16x16 images
    sc = random_saliency(b, side, seed)
    x = torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(seed + 10))
    y = torch.randint(0, k, (b,), generator=torch.Generator().manual_seed(seed + 20))
    a_dist = ref_a_dist(sc)
    want_x, want_t = ref_mixup_process(x, F.one_hot(y, k).float(), sc, a_dist, np.random.default_rng(seed),
                                       thres_type=thres_type, **OPTS)
    m = CoMixup(m_thres_type=thres_type)
    masks = m.labeling(sc, np.random.default_rng(seed), 4)
    got = [cm.mix_input(mask, x[i * 20:(i + 1) * 20], F.one_hot(y, k).float()[i * 20:(i + 1) * 20])
           for i, mask in enumerate(masks)]
    torch.testing.assert_close(torch.cat([g[0] for g in got]), want_x)
    torch.testing.assert_close(torch.cat([g[1] for g in got]), want_t)
    torch.testing.assert_close(cm.compat_matrix(sc), a_dist)
    # outputs really mix several inputs, and not all alike
    shares = torch.cat([mask.reshape(mask.shape[0], -1, mask.shape[-1]).sum(1) for mask in masks[:1]])
    assert (shares > 0).sum(1).max() >= 2
    assert len({tuple(r.tolist()) for r in (shares > 0).int()}) > 5


def test_the_labeling_is_a_partition_of_the_blocks_and_lowers_the_objective():
    sc = random_saliency(20, 16, 3)
    m = CoMixup()
    (mask,) = m.labeling(sc, np.random.default_rng(3), 4)
    assert mask.shape == (20, 4, 4, 20)
    torch.testing.assert_close(mask.sum(-1), torch.ones(20, 4, 4))  # each block's weights over inputs sum to 1
    assert set(mask.unique().tolist()) <= {0.0, 0.5, 1.0}
    # the objective at the solution is below that of the random initial labeling it started from
    pooled = F.avg_pool2d(sc.unsqueeze(1), 4).squeeze(1)
    rng = np.random.default_rng(3)
    prior = rng.dirichlet(2.0 * np.ones(20))
    init = rng.integers(0, 20, (20, 4, 4))
    cost = -(pooled / pooled.reshape(20, -1).sum(1).reshape(20, 1, 1))
    cost = cost - 0.05 / 16 * torch.log(torch.as_tensor(prior, dtype=torch.float32).reshape(20, 1, 1) + 1e-8)
    start = cm.obj_fn(cost, F.one_hot(torch.as_tensor(init), 20).float(), 0.32 / 16, 1.0 / 16)
    assert cm.obj_fn(cost, mask, 0.32 / 16, 1.0 / 16) < start


def ref_step_grads(model, x, y, k, sc_rng, clean_lam=1.0):
    """main.py's training step (``clean_lam > 0``): the saliency forward in train mode whose loss
    ``2 clean_lam / K * CE`` is back-propagated (retained), then the mixed batch's ``BCELoss(softmax)``; returns
    the accumulated parameter gradients and the loss."""
    model.train()
    model.zero_grad()
    input_var = x.clone().requires_grad_(True)
    output = model(input_var)
    loss_batch = 2 * clean_lam * F.cross_entropy(output, y, reduction="none") / k
    loss_batch.mean(0).backward(retain_graph=True)
    sc = torch.sqrt(torch.mean(input_var.grad ** 2, dim=1))
    a_dist = ref_a_dist(sc)
    out, target = ref_mixup_process(x, F.one_hot(y, k).float(), sc, a_dist, sc_rng, **OPTS)
    loss = torch.nn.BCELoss()(torch.softmax(model(out), dim=1), target)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, loss.detach() + loss_batch.mean(0).detach()


def test_a_training_step_gives_the_references_gradients_clean_loss_included():
    torch.manual_seed(0)
    b, k = 24, 4
    x = torch.randn(b, 3, 16, 16)
    y = torch.arange(b) % k
    model = CNN((3, 16, 16), k, width=4)
    ref_model = copy.deepcopy(model)
    x8 = torch.zeros(b, 3, 16, 16, dtype=torch.uint8)
    m = CoMixup(criterion="bce_softmax")
    ctx = make_ctx(x8, y, k, model=model, seed=5)
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(b)), ctx)
    model.zero_grad()
    out.loss.backward()
    want, want_loss = ref_step_grads(ref_model, x, y, k, np.random.default_rng(5))
    torch.testing.assert_close(out.loss.detach(), want_loss)  # BCE(softmax) of the mixed + 2/K CE of the clean
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-6, msg=name)
    # BatchNorm saw the clean batch and the mixed batch, as in the reference
    for (n1, b1), (n2, b2) in zip(model.named_buffers(), ref_model.named_buffers()):
        torch.testing.assert_close(b1, b2, msg=n1)


def test_soft_ce_and_no_clean_loss():
    torch.manual_seed(1)
    b, k = 20, 4
    x, y = torch.randn(b, 1, 16, 16), torch.arange(b) % k
    model = CNN((1, 16, 16), k, width=4)
    m = CoMixup(clean_lam=0.0, criterion="soft_ce")
    ctx = make_ctx(torch.zeros(b, 1, 16, 16, dtype=torch.uint8), y, k, model=model)
    m.setup(ctx)
    before = copy.deepcopy(model)  # (the mixed forward updates BatchNorm's statistics)
    seen = []
    h = model.register_forward_hook(lambda mod, inp, o: seen.append((mod.training, inp[0].detach(), o.detach())))
    out = m(model, Batch(x, y, torch.arange(b)), ctx)
    h.remove()
    assert [s[0] for s in seen] == [False, True]  # clean_lam 0: the saliency forward in eval mode (reference)
    # recompute the target from the same draws and check the soft cross-entropy
    before.eval()
    with torch.enable_grad():
        xv = x.clone().requires_grad_(True)
        F.cross_entropy(before(xv), y).backward()
    sc = xv.grad.pow(2).mean(1).sqrt()
    rng = np.random.default_rng(0)
    want_x, want_t = ref_mixup_process(x, F.one_hot(y, k).float(), sc, ref_a_dist(sc), rng, **OPTS)
    torch.testing.assert_close(seen[1][1], want_x)
    logits = seen[1][2]
    torch.testing.assert_close(out.loss.detach(), -(want_t * F.log_softmax(logits, 1)).sum(1).mean())
    assert ((out.lam > 0.5 - 1e-6) & (out.lam <= 1)).all()


def test_small_images_shrink_the_compatibility_window_instead_of_dividing_by_zero():
    sc = random_saliency(20, 8, 4)  # 8x8: the reference's 8x8 window leaves one position, A_dist = 0
    assert (cm.compat_matrix(sc, window=8) == 0).all()
    assert (cm.compat_matrix(sc) == 0).all()  # (the window is the image here) and the labeling still works:
    (mask,) = CoMixup().labeling(sc, np.random.default_rng(0), 4)
    assert torch.isfinite(mask).all()
    torch.testing.assert_close(mask.sum(-1), torch.ones(20, 4, 4))


def test_the_threshold_forms():
    g = torch.Generator().manual_seed(0)
    p = torch.randint(0, 20, (6,), generator=g).float()
    a = 0.6 * torch.eye(6) + 0.4 * torch.rand(6, 6, generator=g)
    q = a @ p
    ref = ((q > 18).float() * a) @ p  # the official expression, as Python parses it (2 gamma = 1)
    torch.testing.assert_close(cm.modular_penalty(a, p, 0.5, 18.0, "hard"), ref)
    torch.testing.assert_close(cm.modular_penalty(a, p, 0.5, 18.0, "hard", "elementwise"), (q > 18).float() * q)
    torch.testing.assert_close(cm.modular_penalty(a, p, 0.5, 18.0, "soft"), (q > 18).float() * (q - 18))
    eye = torch.eye(6)  # with m_omega 0 the two forms agree
    torch.testing.assert_close(cm.modular_penalty(eye, p, 0.5, 18.0, "hard"),
                               cm.modular_penalty(eye, p, 0.5, 18.0, "hard", "elementwise"))
    assert 0 < int((q > 18).sum()) < 6 and not torch.equal(ref, (q > 18).float() * q)
    with pytest.raises(PluginError, match="m_thres_form must be one of reference, elementwise"):
        CoMixup(m_thres_form="paper")


def test_a_last_partition_of_one_row_stays_itself():
    masks = CoMixup(m_part=4).labeling(random_saliency(9, 8, 5), np.random.default_rng(0), 2)
    assert [m.shape for m in masks] == [(4, 2, 2, 4), (4, 2, 2, 4), (1, 2, 2, 1)]
    assert (masks[-1] == 1).all()


def test_refusals_are_one_clear_line(cli, write, monkeypatch):
    with pytest.raises(PluginError, match="m_thres_type must be one of hard, soft"):
        CoMixup(m_thres_type="medium")
    with pytest.raises(PluginError, match="m_part must be an integer >= 2"):
        CoMixup(m_part=1)
    with pytest.raises(PluginError, match="criterion must be one of"):
        CoMixup(criterion="ce")
    with pytest.raises(PluginError, match="needs square images"):
        CoMixup().check_input((3, 16, 12))
    with pytest.raises(PluginError, match="a 16x16 block grid needs images of at least 16x16"):
        CoMixup(m_block_num=16).check_input((1, 8, 8))
    assert CoMixup(m_block_num=-1).sides(8) == [2, 4, 8]
    monkeypatch.setattr(cm, "have_gco", lambda: False)
    with pytest.raises(PluginError, match=r'comixup needs the gco-wrapper package.*pip install "mixcli\[puzzlemix\]"'):
        CoMixup().setup(make_ctx(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4), 4))
    code, text = cli("validate", write("""\
        name: nogco
        dataset: {name: digits}
        model: {name: cnn, width: 4}
        method: comixup
        seeds: [0]
        """))
    assert code == 2 and "comixup needs the gco-wrapper package" in text, text
    monkeypatch.undo()
    for method, data, want in (
            ("{name: comixup, m_beta: -1}", "{name: digits}", "m_beta must be >= 0, got -1"),
            ("{name: comixup, m_block_num: 16}", "{name: digits}", "a 16x16 block grid needs images"),
            ("comixup", "{name: diabetes}", "classification"),
    ):
        code, text = cli("validate", write(f"""\
            name: bad
            task: {"regression" if "diabetes" in data else "classification"}
            dataset: {data}
            model: {{name: mlp, widths: [8]}}
            method: {method}
            seeds: [0]
            """))
        assert code == 2 and want in text and "Traceback" not in text, text


def test_a_tiny_run_on_digits(cli, write, tmp_path):
    code, text = cli("run", write("""\
        name: comix
        dataset: {name: digits, fraction: 0.1}
        model: {name: cnn, width: 4}
        method: {name: comixup, m_niter: 2}
        train: {epochs: 1, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
        seeds: [0]
        """), "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    runs = pd.read_parquet(tmp_path / "r" / "runs")
    assert runs.iloc[0]["status"] == "finished" and 0 <= runs.iloc[0]["final_test_accuracy"] <= 1


def test_the_graph_cuts_hold_the_gco_lock_shared_with_puzzlemix():
    import threading

    from mixcli.mixing.graphcut import GCO_LOCK
    from mixcli_plugins.methods import puzzlemix

    assert puzzlemix.GCO_LOCK is GCO_LOCK and cm.GCO_LOCK is GCO_LOCK
    unary = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    done = threading.Event()
    with GCO_LOCK:
        t = threading.Thread(target=lambda: (cm.graphcut(unary, 0.1), done.set()))
        t.start()
        assert not done.wait(0.5)  # the cut waits for the lock
    t.join(10)
    assert done.is_set()
