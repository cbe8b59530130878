"""Issue 19's bugs, each checked by what a user would see: uint8 mixing, PuzzleMix on every image side,
SaliencyMix on 1-pixel sides, bf16 models in the set-up of snapmix / alignmix / automix, and the CutMix
box against timm 1.0.31's ``rand_bbox`` (the docstring now says how they differ)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mixcli.api import Batch, Context, DataBundle, PluginError, Split, interpolate
from mixcli.mixing.boxes import box_at, box_mask, cut_box, mix_rows
from mixcli_plugins.methods.alignmix import AlignMix
from mixcli_plugins.methods.automix import AutoMix
from mixcli_plugins.methods.puzzlemix import PuzzleMix
from mixcli_plugins.methods.saliencymix import SaliencyMix, saliency_peak
from mixcli_plugins.methods.snapmix import SnapMix
from mixcli_plugins.models.cnn import CNN


def make_ctx(x, y, k, model=None, seed=0):
    data = DataBundle("classification", Split(x, y), Split(x, y), num_classes=k)
    return Context("classification", k, torch.device("cpu"), np.random.default_rng(seed), Split(x, y),
                   lambda i: (x[i], y[i]), 1, data=data, model=model)


def test_interpolate_mixes_uint8_in_float_and_rounds_back():
    x = torch.tensor([[0], [200]], dtype=torch.uint8)
    out = interpolate(x, torch.tensor([1, 0]), torch.tensor([0.5, 0.5]))
    assert out.dtype == torch.uint8 and out.tolist() == [[100], [100]]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=g)
    perm, lam = torch.randperm(6, generator=g), torch.rand(6, generator=g)
    want = (lam.view(-1, 1, 1, 1) * x.float() + (1 - lam.view(-1, 1, 1, 1)) * x[perm].float()).round()
    assert torch.equal(interpolate(x, perm, lam).float(), want)
    assert torch.equal(interpolate(x.float(), perm, lam), lam.view(-1, 1, 1, 1) * x.float()
                       + (1 - lam.view(-1, 1, 1, 1)) * x[perm].float())  # floats: the formula, unchanged


def test_mix_rows_on_uint8_keeps_the_box_exact():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    perm = torch.tensor([1, 2, 3, 0])
    mask = box_mask((np.array([2] * 4), np.array([5] * 4), np.array([1] * 4), np.array([4] * 4)), 8, 8, "cpu")
    out = mix_rows(x, perm, torch.ones(4), mask)
    assert out.dtype == torch.uint8
    assert torch.equal(out[:, :, 2:5, 1:4], x[perm][:, :, 2:5, 1:4]) and torch.equal(out[:, :, :2], x[:, :, :2])


@pytest.mark.parametrize("side", [24, 28, 30, 40, 48, 96, 8, 32, 36])
def test_puzzlemix_steps_on_every_grid_side_of_common_image_sizes(side):
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (4, 1, side, side), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    model = CNN((1, side, side), 2, width=4)
    m = PuzzleMix(solver="exact", graph_threads=1)
    m.check_input((1, side, side))
    ctx = make_ctx(x8, y, 2, model=model)
    m.setup(ctx)
    x = x8.float() / 255
    for n in m.sides:
        mixed, ratio = m.mix(x, torch.rand(4, side, side), torch.tensor([1, 0, 3, 2]), 0.4, n)
        assert mixed.shape == x.shape and ((ratio >= 0) & (ratio <= 1)).all() and torch.isfinite(mixed).all()
    out = m(model, Batch(x, y, torch.arange(4)), ctx)
    assert out.logits.shape == (4, 2)


def test_puzzlemix_refuses_sizes_it_cannot_mix_in_check_input():
    m = PuzzleMix()
    with pytest.raises(PluginError, match="square"):
        m.check_input((3, 32, 16))
    with pytest.raises(PluginError, match="no grid side divides the image width 7"):
        m.check_input((3, 7, 7))
    with pytest.raises(PluginError, match="image inputs"):
        m.check_input((10,))


@pytest.mark.parametrize("shape", [(1, 8), (8, 1), (1, 1), (2, 2)])
@pytest.mark.parametrize("detector", ["fine_grained", "spectral_residual"])
def test_saliencymix_on_one_pixel_sides(shape, detector):
    x = torch.rand(4, 3, *shape)
    y = torch.tensor([0, 1, 0, 1])
    m = SaliencyMix(saliency=detector)
    ctx = make_ctx(x, y, 2)
    m.setup(ctx)
    out = m(lambda z: z, Batch(x, y, torch.arange(4)), ctx)
    assert out.logits.shape == x.shape and ((out.lam >= 0) & (out.lam <= 1)).all()
    cy, cx = saliency_peak(x[:1], detector)
    assert 0 <= int(cy) < shape[0] and 0 <= int(cx) < shape[1]


@pytest.mark.parametrize("cls", [SnapMix, AlignMix, AutoMix])
def test_bf16_models_set_up_and_step(cls):
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    model = CNN((3, 16, 16), 2, width=4).to(torch.bfloat16)
    m = cls(alpha=1.0) if cls is not SnapMix else cls()
    ctx = make_ctx(x, y, 2, model=model)
    ctx.extra["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.01)  # as the engine gives it (automix)
    m.setup(ctx)
    m.start_epoch(1, ctx)
    out = m(model, Batch(x.bfloat16(), y, torch.arange(4)), ctx)
    assert out.logits.shape == (4, 2) and torch.isfinite(out.logits.float()).all()


def test_cut_box_default_is_torchvision_s_box_and_differs_from_timm_as_documented():
    """For the same centre: our box = torchvision v2.CutMix's (half-sides int(0.5 sqrt(1-lam) H)); timm
    1.0.31's rand_bbox splits int(sqrt(1-lam) H) into floor/ceil halves (one pixel more for odd sides)."""
    import timm.data.mixup as tm

    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(300):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        lam = float(rng.uniform(0, 1))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, y2, x1, x2 = (int(v) for v in box_at(cy, cx, lam, h, w))
        r = 0.5 * np.sqrt(1.0 - lam)  # torchvision 0.29 _v2 CutMix._transform's formula
        rh, rw = int(r * h), int(r * w)
        assert (y1, y2, x1, x2) == (max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w))
        with _fixed_randint([cy, cx]):
            ty1, ty2, tx1, tx2 = (int(v) for v in tm.rand_bbox((h, w), lam))
        ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        assert (ty1, ty2, tx1, tx2) == (max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h),
                                        max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w))
        differ += (ty1, ty2, tx1, tx2) != (y1, y2, x1, x2)
        assert 0 <= y1 <= y2 <= h and 0 <= x1 <= x2 <= w
    assert differ > 0  # the documented difference is real


class _fixed_randint:
    """np.random.randint returning the given values in turn (timm draws the centre with it)."""

    def __init__(self, values):
        self.values = list(values)

    def __enter__(self):
        self.real = np.random.randint
        np.random.randint = lambda *a, **k: self.values.pop(0)

    def __exit__(self, *exc):
        np.random.randint = self.real


def test_cut_box_minmax_includes_the_upper_side_bound_that_timm_excludes():
    rng = np.random.default_rng(0)
    h = w = 10
    hs = set()
    for _ in range(400):
        y1, y2, x1, x2 = cut_box(0.5, h, w, rng, (0.2, 0.5))
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        hs.add(y2 - y1)
    assert hs == {2, 3, 4, 5}
    import timm.data.mixup as tm
    np.random.seed(0)
    timm_sides = {int(np.subtract(*tm.rand_bbox_minmax((h, w), (0.2, 0.5))[1::-1])) for _ in range(400)}
    assert timm_sides == {2, 3, 4}


# ------------------------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("dataset, method, message", [
    ("{name: mnist}", "{name: puzzlemix, block_num: [3, 5]}", "no grid side divides the image width 28"),
    ("{name: diabetes}", "cutmix", "needs image inputs"),
    ("{name: diabetes}", "{name: mixup, cutmix_alpha: 1.0}", "needs image inputs"),
])
def test_validate_refuses_what_the_method_declares_it_cannot_mix(cli, write, dataset, method, message):
    task = "regression" if "diabetes" in dataset else "classification"
    model = "{name: mlp}" if "diabetes" in dataset else "{name: cnn}"
    p = write(f"name: v\ntask: {task}\ndataset: {dataset}\nmodel: {model}\nmethod: {method}\n")
    code, text = cli("validate", p)
    assert code == 2 and message in " ".join(text.split())


def test_validate_accepts_puzzlemix_on_28x28(cli, write):
    p = write("name: v\ndataset: {name: mnist}\nmodel: {name: cnn}\nmethod: puzzlemix\n")
    code, text = cli("validate", p)
    assert code == 0, text


def test_puzzlemix_neighbourhood_is_the_reference_s_wherever_the_reference_runs(monkeypatch):
    import mixcli_plugins.methods.puzzlemix as pm

    ours = pm.neigh_for
    changed = 0
    for w in range(2, 100, 2):
        for n in (2, 4, 8, 16):
            if w % n or n > w:
                continue
            x, sal = torch.rand(1, 1, w, w), torch.rand(1, w, w)
            monkeypatch.setattr(pm, "neigh_for", lambda width, n, size: min(size, width // n))  # the reference
            try:
                pm.graph_terms(x, sal, torch.tensor([0]), n, 1.2, 0.5, 4)
                runs = True
            except RuntimeError:
                runs = False
            monkeypatch.setattr(pm, "neigh_for", ours)
            pm.graph_terms(x, sal, torch.tensor([0]), n, 1.2, 0.5, 4)  # ours always runs
            if runs:
                assert ours(w, n, 4) == min(4, w // n)
            changed += not runs
    assert changed > 0
