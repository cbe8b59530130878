"""gridmix, smoothmix, snapmix, transmix, puzzlemix, automix: invariants, and agreement with ports of the
reference code paths (OpenMixup, the official SnapMix / TransMix / PuzzleMix code) on random tensors.

The ports below follow the reference code line by line (loops, per-sample CPU work, the reference's
tensor layouts); the implementations under test are batched and written differently."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixcli.api import Batch, Context, DataBundle, PluginError, Split
from mixcli_plugins.methods.automix import AutoMix, MixBlock, momentum_at
from mixcli_plugins.methods.gridmix import GridMix, grid_mask
from mixcli_plugins.methods.puzzlemix import PuzzleMix, exact_labels, input_saliency, mask_transport, transport_image
from mixcli_plugins.methods.smoothmix import SmoothMix, smooth_mask
from mixcli_plugins.methods.snapmix import SnapMix, semantic_maps, snapmix_weights
from mixcli_plugins.methods.transmix import TransMix, transmix_lam
from mixcli_plugins.models.cnn import CNN
from resume_helpers import full_and_resumed


def make_ctx(x, y, k, model=None, seed=0, mean=None, std=None, epochs=1):
    data = DataBundle("classification", Split(x, y), Split(x, y), num_classes=k, mean=mean, std=std)
    return Context(task="classification", num_classes=k, device=torch.device("cpu"), rng=np.random.default_rng(seed),
                   train=Split(x, y), fetch=lambda i: (x[i], y[i]), epochs=epochs, data=data, model=model)


class Capture(nn.Module):
    """A stand-in model that keeps the input it is given and returns zero logits."""

    def __init__(self, k):
        super().__init__()
        self.k, self.x = k, None

    def forward(self, x):
        self.x = x
        return torch.zeros(x.shape[0], self.k)


def rand(n=8, c=3, h=32, w=32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- GridMix
def om_rand_grid(lam, H, W, cut_area_ratio, cut_aspect_ratio, n_holes, hole_aspect_ratio, cx, cy):
    """OpenMixup ``gridmix.rand_grid`` (square images; cx, cy given instead of drawn)."""
    cut_area = int(H * W * cut_area_ratio)
    cut_w = int(np.sqrt(cut_area / cut_aspect_ratio))
    cut_h = int(cut_w * cut_aspect_ratio)
    xc1 = int((W - cut_w) * cx)
    yc1 = int((H - cut_h) * cy)
    xc2, yc2 = xc1 + cut_w, yc1 + cut_h
    width, height = xc2 - xc1, yc2 - yc1
    patch_width = math.ceil(width / n_holes)
    patch_height = int(patch_width * hole_aspect_ratio)
    ny = math.ceil(height / patch_height)
    ratio = np.sqrt(1 - lam)
    hole_width = min(max(int(patch_width * ratio), 1), patch_width - 1)
    hole_height = min(max(int(patch_height * ratio), 1), patch_height - 1)
    holes = []
    for i in range(n_holes + 1):
        for j in range(ny + 1):
            x1 = min(patch_width * i, width)
            y1 = min(patch_height * j, height)
            holes.append((x1, y1, min(x1 + hole_width, width), min(y1 + hole_height, height)))
    mask = torch.zeros((1, 1, W, H))
    for x1, y1, x2, y2 in holes:
        mask[0, 0, yc1 + y1: yc1 + y2, xc1 + x1: xc1 + x2] = 1.
    return mask[0, 0]


def test_grid_mask_matches_openmixup_rand_grid():
    rng = np.random.default_rng(0)
    for _ in range(300):
        lam, area, aspect, hole_aspect = rng.beta(0.2, 0.2), rng.uniform(0.5, 1), rng.uniform(0.5, 2), rng.uniform(0.8, 1.2)
        cx, cy = rng.random(), rng.random()
        cut_w = int(np.sqrt(int(32 * 32 * area) / aspect))
        n_holes = int(rng.integers(2, min(6, cut_w // 2) + 1))
        ours = grid_mask(32, 32, lam, n_holes, hole_aspect, area, aspect, cx, cy)
        ref = om_rand_grid(lam, 32, 32, area, aspect, n_holes, hole_aspect, cx, cy)
        np.testing.assert_array_equal(ours, ref.numpy())


def test_gridmix_mixes_by_its_mask_and_labels_by_area():
    x, y = rand(8, 3, 32, 32), torch.arange(8)
    m = GridMix(alpha=1.0)
    ctx = make_ctx(x, y, 8)
    m.setup(ctx)
    cap = Capture(8)
    out = m(cap, Batch(x, y, torch.arange(8)), ctx)
    perm = out.y_b  # labels are the row indices, so y_b is the permutation
    own, partner = cap.x == x, cap.x == x[perm]
    assert (own | partner).all()
    took = (~own).all(1).float()  # pixels taken from the partner in every channel (rows with perm(i) = i excluded)
    moved = perm != torch.arange(8)
    assert torch.allclose(out.lam[moved], 1 - took[moved].mean((1, 2)))
    assert ((out.lam > 0) & (out.lam < 1)).all()


def test_gridmix_runs_on_8x8_images_with_clipped_holes():
    x, y = rand(8, 1, 8, 8), torch.arange(8)
    m = GridMix(alpha=1.0)
    ctx = make_ctx(x, y, 8)
    m.setup(ctx)
    for _ in range(20):
        out = m(Capture(8), Batch(x, y, torch.arange(8)), ctx)
        assert ((out.lam >= 0) & (out.lam <= 1)).all()


# ------------------------------------------------------------------------------------------ SmoothMix
def om_gaussian_kernel(kernel_size, rand_w, rand_h, sigma):
    """OpenMixup ``smoothmix.gaussian_kernel``, called as ``gaussian_kernel(h, rand_h, rand_w, sigma)``."""
    s = kernel_size * 2
    x_cord = torch.arange(s)
    x_grid = x_cord.repeat(s).view(s, s)
    y_grid = x_grid.t()
    xy_grid = torch.stack([x_grid, y_grid], dim=-1)
    xy_grid = torch.roll(xy_grid, rand_w, 0)
    xy_grid = torch.roll(xy_grid, rand_h, 1)
    crop_size = s // 4
    xy_grid = xy_grid[crop_size: s - crop_size, crop_size: s - crop_size]
    mean = (s - 1) / 2
    var = sigma ** 2
    g = torch.exp(-torch.sum((xy_grid - mean) ** 2, dim=-1) / (2 * var))
    return g.view(kernel_size, kernel_size)


@pytest.mark.parametrize("h", [8, 32])
def test_smooth_mask_matches_openmixup_kernel(h):
    rng = np.random.default_rng(1)
    for _ in range(50):
        rw, rh = int(rng.integers(0, h) - h / 2), int(rng.integers(0, h) - h / 2)
        sigma = (rng.random() / 4 + 0.25) * h
        ref = om_gaussian_kernel(h, rh, rw, torch.tensor(sigma, dtype=torch.float64))
        np.testing.assert_allclose(smooth_mask(h, h, rh, rw, sigma), ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label", ["paper", "openmixup"])
def test_smoothmix_blend_and_label_weights(label):
    x, y = rand(8, 3, 16, 16), torch.arange(8)
    m = SmoothMix(label=label)
    ctx = make_ctx(x, y, 8)
    m.setup(ctx)
    cap = Capture(8)
    out = m(cap, Batch(x, y, torch.arange(8)), ctx)
    perm = out.y_b
    moved = perm != torch.arange(8)
    # recover G per pixel from one moved row: x~ = (1 - G) x + G x[perm]
    i = int(torch.nonzero(moved)[0])
    g = ((cap.x[i] - x[i]) / (x[perm[i]] - x[i]))[0]
    share = float(g.mean())
    assert 0 < share < 1 and float(g.max()) <= 1 + 1e-4
    want = 1 - share if label == "paper" else share
    assert torch.allclose(out.lam, torch.full((8,), want), atol=1e-3)


# ------------------------------------------------------------------------------------------- SnapMix
def ref_get_spm(fms, weight, bias, target, imgsize):
    """Official SnapMix ``get_spm`` given the model's last map (per-sample loops as the reference)."""
    bs = fms.size(0)
    weight = weight.view(weight.size(0), weight.size(1), 1, 1)
    fms = F.relu(fms)
    out = F.conv2d(fms, weight, bias=bias)
    outmaps = torch.stack([out[i, target[i]] for i in range(bs)])
    outmaps = outmaps.view(outmaps.size(0), 1, outmaps.size(1), outmaps.size(2))
    outmaps = F.interpolate(outmaps, imgsize, mode='bilinear', align_corners=False).squeeze()
    for i in range(bs):
        outmaps[i] -= outmaps[i].min()
        outmaps[i] /= outmaps[i].sum()
    return outmaps


def ref_snap_lams(wfmaps, rand_index, target, box, box1, area_lam):
    """The official lam_a / lam_b lines (boxes as (y1, y2, x1, x2))."""
    wfmaps_b = wfmaps[rand_index]
    same_label = target == target[rand_index]
    lam_a = 1 - wfmaps[:, box[0]:box[1], box[2]:box[3]].sum(2).sum(1) / (wfmaps.sum(2).sum(1) + 1e-8)
    lam_b = wfmaps_b[:, box1[0]:box1[1], box1[2]:box1[3]].sum(2).sum(1) / (wfmaps_b.sum(2).sum(1) + 1e-8)
    tmp = lam_a.clone()
    lam_a[same_label] += lam_b[same_label]
    lam_b[same_label] += tmp[same_label]
    lam_a[torch.isnan(lam_a)] = area_lam
    lam_b[torch.isnan(lam_b)] = 1 - area_lam
    return lam_a, lam_b


def test_snapmix_cams_and_weights_match_the_reference():
    g = torch.Generator().manual_seed(0)
    fms, w, b = torch.randn(6, 16, 4, 4, generator=g), torch.randn(10, 16, generator=g), torch.randn(10, generator=g)
    y = torch.tensor([0, 3, 3, 7, 9, 1])
    ours = semantic_maps(fms, w, b, y, (32, 32))
    ref = ref_get_spm(fms, w, b, y, (32, 32))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    perm = torch.tensor([2, 1, 0, 5, 3, 4])
    box, box1 = (4, 20, 6, 30), (10, 14, 0, 9)
    ra, rb = snapmix_weights(ours, ours[perm], box, box1, y == y[perm], 0.3)
    ea, eb = ref_snap_lams(ref.clone(), perm, y, box, box1, 0.3)
    torch.testing.assert_close(ra, ea)
    torch.testing.assert_close(rb, eb)
    same = y == y[perm]
    assert same.any() and torch.equal(ra[same], rb[same])  # same-label rows share the sum


def test_snapmix_step_pastes_the_resized_partner_box_and_weights_the_loss():
    torch.manual_seed(0)
    x, y = rand(8, 1, 8, 8), torch.randint(0, 4, (8,))
    model = CNN((1, 8, 8), 4, width=4)
    m = SnapMix(beta=1.0)
    ctx = make_ctx(x, y, 4, model=model, seed=3)
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(8)), ctx)
    assert out.loss is not None and torch.isfinite(out.loss)
    logp = F.log_softmax(out.logits.detach(), 1)
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    # the loss is rho_a CE_a + rho_b CE_b: at least as large as min(CE) times the summed weights
    ce = -logp.gather(1, y.view(-1, 1)).squeeze(1)
    loss = float(out.loss.detach())
    assert 0 < loss <= float(2 * (ce.max() + (-logp).max()))


def test_snapmix_needs_a_spatial_last_map():
    from mixcli_plugins.models.mlp import MLP
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    ctx = make_ctx(x, y, 4, model=MLP((64,), 4))
    with pytest.raises(PluginError):
        SnapMix().setup(ctx)


# ------------------------------------------------------------------------------------------ TransMix
def ref_transmix_label(attn_flat, box, input_shape):
    """Official ``Mixup_transmix.transmix_label`` (lam part): attn (N, hw) on a square grid."""
    lam0 = (box[1] - box[0]) * (box[3] - box[2]) / (input_shape[2] * input_shape[3])
    mask = torch.zeros((input_shape[2], input_shape[3]))
    mask[box[0]:box[1], box[2]:box[3]] = 1
    mask = nn.Upsample(size=int(math.sqrt(attn_flat.shape[1])))(mask.unsqueeze(0).unsqueeze(0)).int()
    mask = mask.view(1, -1).repeat(len(attn_flat), 1)
    w1, w2 = torch.sum((1 - mask) * attn_flat, dim=1), torch.sum(mask * attn_flat, dim=1)
    return (lam0 + w2 / (w1 + w2)) / 2


def test_transmix_lam_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for grid in (4, 8, 14):
        attn = torch.rand(5, grid, grid, generator=g).softmax(-1)
        for _ in range(10):
            y1, x1 = rng.integers(0, 32, 2)
            box = (int(y1), int(rng.integers(y1, 33)), int(x1), int(rng.integers(x1, 33)))
            ours = transmix_lam(attn, box, 32, 32)
            ref = ref_transmix_label(attn.reshape(5, -1), box, (5, 3, 32, 32))
            torch.testing.assert_close(ours, ref.float())


def test_transmix_on_a_small_vit_uses_its_attention():
    from mixcli_plugins.models.timm_model import TimmModel
    torch.manual_seed(0)
    model = TimmModel((1, 8, 8), 4, arch="vit_tiny_patch16_224", img_size=8, patch_size=2,
                      timm_args={"depth": 1, "embed_dim": 16, "num_heads": 2})
    x, y = rand(8, 1, 8, 8), torch.arange(8) % 4
    m = TransMix(alpha=0.0, cutmix_alpha=1.0)  # always CutMix
    ctx = make_ctx(x, y, 4, model=model)
    m.setup(ctx)
    outs = [m(model, Batch(x, y, torch.arange(8)), ctx) for _ in range(6)]
    assert all(o.smoothing == 0.1 and ((o.lam >= 0) & (o.lam <= 1)).all() for o in outs)
    assert any(o.lam.unique().numel() > 1 for o in outs)  # the attention makes lambda per-row


def test_transmix_needs_a_vit():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    with pytest.raises(PluginError, match="class-token attention"):
        TransMix().setup(make_ctx(x, y, 4, model=CNN((1, 8, 8), 4, width=4)))


# ----------------------------------------------------------------------------------------- PuzzleMix
needs_gco = pytest.mark.skipif(importlib.util.find_spec("gco") is None,
                               reason="puzzlemix needs gco-wrapper (the puzzlemix / dev extra)")


def ref_cost_matrix(width):
    C = np.zeros([width ** 2, width ** 2], dtype=np.float32)
    for m_i in range(width ** 2):
        i1, j1 = m_i // width, m_i % width
        for m_j in range(width ** 2):
            i2, j2 = m_j // width, m_j % width
            C[m_i, m_j] = abs(i1 - i2) ** 2 + abs(j1 - j2) ** 2
    return torch.tensor(C / (width - 1) ** 2)


def ref_graphcut_multi(unary1, unary2, pw_x, pw_y, alpha, beta, eta, n_labels=2, eps=1e-8):
    block_num = unary1.shape[0]
    large_val = 1000 * block_num ** 2
    prior = np.array([-np.log(alpha ** 2 + eps), -np.log(2 * alpha * (1 - alpha) + eps),
                      -np.log((1 - alpha) ** 2 + eps)])
    prior = eta * prior / block_num ** 2
    unary_cost = (large_val * np.stack([(1 - lam) * unary1 + lam * unary2 + prior[i]
                                        for i, lam in enumerate(np.linspace(0, 1, n_labels))], axis=-1)).astype(np.int32)
    pairwise_cost = np.zeros(shape=[n_labels, n_labels], dtype=np.float32)
    for i in range(n_labels):
        for j in range(n_labels):
            pairwise_cost[i, j] = (i - j) ** 2 / (n_labels - 1) ** 2
    pw_x = (large_val * (pw_x + beta)).astype(np.int32)
    pw_y = (large_val * (pw_y + beta)).astype(np.int32)
    import gco
    labels = 1.0 - gco.cut_grid_graph(unary_cost, pairwise_cost, pw_x, pw_y, algorithm='swap') / (n_labels - 1)
    return labels.reshape(block_num, block_num)


def ref_neigh_penalty(input1, input2, k):
    pw_x = input1[:, :, :-1, :] - input2[:, :, 1:, :]
    pw_y = input1[:, :, :, :-1] - input2[:, :, :, 1:]
    pw_x = pw_x[:, :, k - 1::k, :]
    pw_y = pw_y[:, :, :, k - 1::k]
    return F.avg_pool2d(pw_x.abs().mean(1), kernel_size=(1, k)), F.avg_pool2d(pw_y.abs().mean(1), kernel_size=(k, 1))


def ref_mask_transport(mask, grad_pool, eps=0.01):
    batch_size, block_num = mask.shape[0], mask.shape[-1]
    C = ref_cost_matrix(block_num).unsqueeze(0)
    z = (mask > 0).float()
    cost = eps * C - grad_pool.reshape(-1, block_num ** 2, 1) * z.reshape(-1, 1, block_num ** 2)
    for _ in range(int(block_num)):
        row_best = cost.min(-1)[1]
        plan = torch.zeros_like(cost).scatter_(-1, row_best.unsqueeze(-1), 1)
        cost_fight = plan * cost
        col_best = cost_fight.min(-2)[1]
        plan_win = torch.zeros_like(cost).scatter_(-2, col_best.unsqueeze(-2), 1) * plan
        plan_lose = (1 - plan_win) * plan
        cost += plan_lose
    return plan_win


def ref_transport_image(img, plan, batch_size, block_num, block_size):
    p = img.reshape([batch_size, 3, block_num, block_size, block_num * block_size]).transpose(-2, -1)
    p = p.reshape([batch_size, 3, block_num, block_num, block_size, block_size]).transpose(-2, -1)
    p = p.reshape([batch_size, 3, block_num ** 2, block_size, block_size]).permute(0, 1, 3, 4, 2).unsqueeze(-1)
    t = plan.transpose(-2, -1).unsqueeze(1).unsqueeze(1).unsqueeze(1).matmul(p).squeeze(-1).permute(0, 1, 4, 2, 3)
    t = t.reshape([batch_size, 3, block_num, block_num, block_size, block_size])
    t = t.transpose(-2, -1).reshape([batch_size, 3, block_num, block_num * block_size, block_size])
    return t.transpose(-2, -1).reshape([batch_size, 3, block_num * block_size, block_num * block_size])


def ref_mixup_graph(input1, grad1, indices, block_num, alpha, beta, gamma, eta, neigh_size, n_labels, mean, std,
                    transport, t_eps, t_size):
    """Official PuzzleMix ``mixup_graph`` (CPU, no adversarial noise, no multiprocessing)."""
    input2 = input1[indices].clone()
    batch_size, _, _, width = input1.shape
    block_size = width // block_num
    neigh_size = min(neigh_size, block_size)
    t_size = min(t_size, block_size)
    beta = beta / block_num / 16
    grad1_pool = F.avg_pool2d(grad1, block_size)
    unary1_torch = grad1_pool / grad1_pool.reshape(batch_size, -1).sum(1).reshape(batch_size, 1, 1)
    unary2_torch = unary1_torch[indices]
    input1_pool = F.avg_pool2d(input1 * std + mean, neigh_size)
    input2_pool = input1_pool[indices]
    pw_x = torch.zeros([batch_size, 2, 2, block_num - 1, block_num])
    pw_y = torch.zeros([batch_size, 2, 2, block_num, block_num - 1])
    k = block_size // neigh_size
    pw_x[:, 0, 0], pw_y[:, 0, 0] = ref_neigh_penalty(input2_pool, input2_pool, k)
    pw_x[:, 0, 1], pw_y[:, 0, 1] = ref_neigh_penalty(input2_pool, input1_pool, k)
    pw_x[:, 1, 0], pw_y[:, 1, 0] = ref_neigh_penalty(input1_pool, input2_pool, k)
    pw_x[:, 1, 1], pw_y[:, 1, 1] = ref_neigh_penalty(input1_pool, input1_pool, k)
    pw_x = beta * gamma * pw_x
    pw_y = beta * gamma * pw_y
    unary1 = unary1_torch.clone()
    unary2 = unary2_torch.clone()
    unary2[:, :-1, :] += (pw_x[:, 1, 0] + pw_x[:, 1, 1]) / 2.
    unary1[:, :-1, :] += (pw_x[:, 0, 1] + pw_x[:, 0, 0]) / 2.
    unary2[:, 1:, :] += (pw_x[:, 0, 1] + pw_x[:, 1, 1]) / 2.
    unary1[:, 1:, :] += (pw_x[:, 1, 0] + pw_x[:, 0, 0]) / 2.
    unary2[:, :, :-1] += (pw_y[:, 1, 0] + pw_y[:, 1, 1]) / 2.
    unary1[:, :, :-1] += (pw_y[:, 0, 1] + pw_y[:, 0, 0]) / 2.
    unary2[:, :, 1:] += (pw_y[:, 0, 1] + pw_y[:, 1, 1]) / 2.
    unary1[:, :, 1:] += (pw_y[:, 1, 0] + pw_y[:, 0, 0]) / 2.
    pw_x = (pw_x[:, 1, 0] + pw_x[:, 0, 1] - pw_x[:, 1, 1] - pw_x[:, 0, 0]) / 2
    pw_y = (pw_y[:, 1, 0] + pw_y[:, 0, 1] - pw_y[:, 1, 1] - pw_y[:, 0, 0]) / 2
    unary1, unary2, pw_x, pw_y = (t.numpy() for t in (unary1, unary2, pw_x, pw_y))
    mask = [ref_graphcut_multi(unary2[i], unary1[i], pw_x[i], pw_y[i], alpha, beta, eta, n_labels)
            for i in range(batch_size)]
    mask = torch.tensor(np.array(mask), dtype=torch.float32).unsqueeze(1)
    if transport:
        if t_size < block_size:
            t_block_num = width // t_size
            mask = F.interpolate(mask, size=t_block_num)
            grad1_pool = F.avg_pool2d(grad1, t_size)
            unary1_torch = grad1_pool / grad1_pool.reshape(batch_size, -1).sum(1).reshape(batch_size, 1, 1)
            unary2_torch = unary1_torch[indices]
        else:
            t_block_num = block_num
        plan = ref_mask_transport(mask, unary1_torch, eps=t_eps)
        input1 = ref_transport_image(input1, plan, batch_size, t_block_num, t_size)
        plan = ref_mask_transport(1 - mask, unary2_torch, eps=t_eps)
        input2 = ref_transport_image(input2, plan, batch_size, t_block_num, t_size)
    mask = F.interpolate(mask, size=width)
    ratio = mask.reshape(batch_size, -1).mean(-1)
    return mask * input1 + (1 - mask) * input2, ratio


@needs_gco
@pytest.mark.parametrize("block_num", [2, 4, 8, 16])
def test_puzzlemix_matches_the_reference_mixup_graph(block_num):
    g = torch.Generator().manual_seed(block_num)
    b = 4
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    x = torch.randn(b, 3, 32, 32, generator=g)
    sal = torch.rand(b, 32, 32, generator=g) ** 3
    perm = torch.tensor([2, 0, 3, 1])
    m = PuzzleMix()
    m.setup(make_ctx((x * 50 + 128).clamp(0, 255).to(torch.uint8), torch.arange(b), b, mean=mean, std=std))
    for lam in (0.2, 0.5, 0.83):
        ours, ratio = m.mix(x, sal, perm, lam, block_num)
        ref, ref_ratio = ref_mixup_graph(x, sal, perm.numpy(), block_num, lam, 1.2, 0.5, 0.2, 4, 3,
                                         torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1),
                                         True, 0.8, 4)
        torch.testing.assert_close(ratio, ref_ratio)
        torch.testing.assert_close(ours, ref)


def test_transport_of_c_channels_matches_the_reference_layout():
    g = torch.Generator().manual_seed(0)
    for n in (2, 4, 8):
        x = torch.randn(3, 3, 16, 16, generator=g)
        mask = (torch.rand(3, 1, n, n, generator=g) > 0.5).float()
        sal = torch.rand(3, n, n, generator=g)
        plan = mask_transport(mask, sal, 0.8)
        torch.testing.assert_close(plan, ref_mask_transport(mask, sal, 0.8))
        torch.testing.assert_close(transport_image(x, plan, n), ref_transport_image(x, plan, 3, n, 16 // n))


def test_input_saliency_is_the_eval_mode_input_gradient_and_restores_modes():
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 4, width=4).train()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    sal = input_saliency(model, x, y)
    assert model.training and all(mod.training for mod in model.modules())
    model.eval()
    xv = x.clone().requires_grad_(True)
    F.cross_entropy(model(xv), y).backward()
    torch.testing.assert_close(sal, xv.grad.pow(2).mean(1).sqrt())


@needs_gco
def test_puzzlemix_step_on_digits_sized_images():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = PuzzleMix()
    ctx = make_ctx(x8, y, 4, model=model)
    m.setup(ctx)
    assert m.sides == [2, 4, 8]
    x = x8.float() / 255
    for _ in range(2):
        out = m(model, Batch(x, y, torch.arange(16)), ctx)
        assert ((out.lam >= 0) & (out.lam <= 1)).all() and out.logits.shape == (16, 4)
    assert all(p.grad is None for p in model.parameters())  # the saliency pass leaves no parameter gradients


def grid_energies(labelings, unary, cost_v, cost_h, n_labels):
    """E(x) x (L-1)^2 for labelings (M, n, n): the reference energy, computed directly."""
    n = unary.shape[0]
    ii, jj = np.meshgrid(range(n), range(n), indexing="ij")
    x = labelings
    e = unary[ii, jj, x].sum((1, 2)) * (n_labels - 1) ** 2
    e = e + (cost_v * (x[:, :-1] - x[:, 1:]) ** 2).sum((1, 2)) + (cost_h * (x[:, :, :-1] - x[:, :, 1:]) ** 2).sum((1, 2))
    return e


@pytest.mark.parametrize("n_labels, n", [(2, 3), (3, 2), (3, 3), (4, 2)])
def test_exact_labels_reach_the_brute_force_minimum(n_labels, n):
    import itertools
    rng = np.random.default_rng(n_labels * 10 + n)
    every = np.array(list(itertools.product(range(n_labels), repeat=n * n))).reshape(-1, n, n)
    for _ in range(5):
        u = rng.integers(-50, 200, (n, n, n_labels))
        cv, ch = rng.integers(0, 60, (n - 1, n)), rng.integers(0, 60, (n, n - 1))
        x = exact_labels(u, cv, ch, n_labels).reshape(1, n, n)
        assert grid_energies(x, u, cv, ch, n_labels)[0] == grid_energies(every, u, cv, ch, n_labels).min()


@needs_gco
def test_exact_labels_are_never_worse_than_the_reference_swap():
    import gco
    rng = np.random.default_rng(0)
    n, lab = 8, 3
    pairwise = ((np.arange(lab)[:, None] - np.arange(lab)[None]) ** 2 / (lab - 1) ** 2).astype(np.float32)
    for _ in range(5):
        u = rng.integers(0, 3000, (n, n, lab)).astype(np.int32)
        cv, ch = rng.integers(0, 800, (n - 1, n)).astype(np.int32), rng.integers(0, 800, (n, n - 1)).astype(np.int32)
        ours = exact_labels(u, cv, ch, lab).reshape(1, n, n)
        swap = gco.cut_grid_graph(u, pairwise, cv, ch, algorithm="swap").reshape(1, n, n)
        assert grid_energies(ours, u, cv, ch, lab)[0] <= grid_energies(swap, u, cv, ch, lab)[0]


def test_puzzlemix_exact_solver_step_needs_no_package():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(8) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = PuzzleMix(solver="exact", graph_threads=1)
    ctx = make_ctx(x8, y, 4, model=model)
    m.setup(ctx)
    out = m(model, Batch(x8.float() / 255, y, torch.arange(8)), ctx)
    assert ((out.lam >= 0) & (out.lam <= 1)).all() and torch.isfinite(out.logits).all()


def test_puzzlemix_without_gco_says_how_to_install(monkeypatch):
    import mixcli_plugins.methods.puzzlemix as pm
    real = pm.importlib.util.find_spec
    monkeypatch.setattr(pm.importlib.util, "find_spec", lambda name, *a: None if name == "gco" else real(name, *a))
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 4
    with pytest.raises(PluginError, match=r"mixcli\[puzzlemix\]"):
        PuzzleMix(solver="gco").setup(make_ctx(x, y, 4, model=CNN((1, 8, 8), 4, width=4)))
    m = PuzzleMix()  # auto: falls back to the exact solver, and says so
    with pytest.warns(UserWarning, match="solved exactly"):
        m.setup(make_ctx(x, y, 4, model=CNN((1, 8, 8), 4, width=4)))
    assert m.use == "exact"


# ------------------------------------------------------------------------------------------- AutoMix
def test_mixblock_is_cross_attention_of_the_two_feature_maps():
    torch.manual_seed(0)
    block = MixBlock(8, reduction=2)
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    h = torch.randn(4, 8, 3, 3)
    perm = torch.tensor([1, 2, 3, 0])
    m = block(h, 0.3, perm, (6, 6), "nearest")
    wq, bq = block.query.weight[:, :, 0, 0], block.query.bias
    wv, bv = block.value.weight[:, :, 0, 0], block.value.bias
    for i in range(4):
        a, b = h[i].reshape(8, 9), h[perm[i]].reshape(8, 9)
        q, k = wq @ a + bq[:, None], wq @ b + bq[:, None]
        v = wv @ b + bv[:, None]                       # (1, 9)
        att = torch.softmax(q.T @ k / 2.0, dim=1)      # sqrt(8 / 2) = 2
        small = (att @ v.T).reshape(3, 3)
        want = torch.sigmoid(small.repeat_interleave(2, 0).repeat_interleave(2, 1))
        torch.testing.assert_close(m[i, 0], want)


def test_momentum_schedule_is_openmixups_cosine_hook():
    total = 1000
    assert momentum_at(0, total, 0.999, 0.999999) == 0.999
    assert momentum_at(99, total, 0.999, 0.999999) == 0.999
    for t in (100, 500, 999):
        want = 0.999999 - (0.999999 - 0.999) * (math.cos(math.pi * t / total) + 1) / 2
        assert momentum_at(t, total, 0.999, 0.999999) == pytest.approx(want)


def test_automix_trains_the_mixblock_and_keeps_the_encoder_an_ema():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(32) % 4
    model = CNN((1, 8, 8), 4, width=4)
    m = AutoMix(lam_margin=0.0)
    ctx = make_ctx(x8, y, 4, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.extra["optimizer"] = opt  # the engine's (heads: reference trains head_mix_q at its lr)
    m.setup(ctx)
    m.start_epoch(1, ctx)
    x = x8.float() / 255
    before = [p.clone() for p in m.block.parameters()]
    for step in range(2):
        ctx.step = step
        k_before = [p.clone() for p in m.k.parameters()]
        q_before = [p.detach().clone() for p in model.parameters()]
        out = m(model, Batch(x, y, torch.arange(32)), ctx)
        if step > 0:  # f_k <- mu f_k + (1 - mu) f_q, with the previous step's momentum
            mu = momentum_at(step - 1, ctx.epochs * (32 // 32), 0.999, 0.999999)
            for pk, kb, qb in zip(m.k.parameters(), k_before, q_before):
                torch.testing.assert_close(pk, mu * kb + (1 - mu) * qb)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert all(p.grad is None for p in m.k.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, m.block.parameters()))  # stepped in backward
    assert all(p.grad is None for p in m.block.parameters())


def test_automix_resume_is_exact(cli, write, tmp_path, monkeypatch):
    """Interrupt a run after epoch 1 and resume it: the final weights, MixBlock, its optimizer state and
    the momentum encoder equal those of the uninterrupted run."""
    exp = """\
    name: am
    dataset: {name: digits, fraction: 0.1}
    model: {name: cnn, width: 4}
    method: {name: automix}
    train: {epochs: 2, batch_size: 64, optimizer: {name: sgd, lr: 0.05}}
    seeds: [0]
    """
    p = write(exp)
    a, b = full_and_resumed(cli, p, tmp_path, monkeypatch)
    for part in ("k", "block"):
        for key in a["method"][part]:
            torch.testing.assert_close(a["method"][part][key], b["method"][part][key], rtol=0, atol=0)
    for sa, sb in zip(a["method"]["opts"], b["method"]["opts"]):
        torch.testing.assert_close(sa["state"][0]["momentum_buffer"], sb["state"][0]["momentum_buffer"],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: GridMix(n_holes=[3, 2]), lambda: SmoothMix(label="x"),
                                  lambda: SnapMix(beta=0), lambda: TransMix(cutmix_alpha=0),
                                  lambda: PuzzleMix(n_labels=5), lambda: PuzzleMix(solver="best"), lambda: AutoMix(upsampling="area")])
def test_bad_options_are_plugin_errors(make):
    with pytest.raises(PluginError):
        make()
