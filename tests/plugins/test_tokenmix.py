"""TokenMix: the masks and the target against a port of the reference (Sense-X/TokenMix ``tokenmix.py``) with
the same draws, the method on a tiny timm ViT, validation, and a run on digits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, DataBundle, PluginError, Split
from mixcli_plugins.methods.tokenmix import TokenMix, block_mask, random_mask, tokenmix_target, tokenmix_weights
from mixcli_plugins.models.timm_model import TimmModel

VIT = dict(arch="vit_tiny_patch16_224", img_size=8, patch_size=2,
           timm_args={"depth": 2, "embed_dim": 16, "num_heads": 2})
VIT_YAML = ("{name: timm, arch: vit_tiny_patch16_224, img_size: 8, patch_size: 2, "
            "timm_args: {depth: 1, embed_dim: 16, num_heads: 2}}")


def tiny_vit(seed=0, k=4):
    torch.manual_seed(seed)
    return TimmModel((1, 8, 8), k, **VIT)


def make_ctx(x, y, k, model, seed=0):
    data = DataBundle("classification", Split(x, y), Split(x, y), num_classes=k)
    return Context(task="classification", num_classes=k, device=torch.device("cpu"), rng=np.random.default_rng(seed),
                   train=Split(x, y), fetch=lambda i: (x[i], y[i]), epochs=1, data=data, model=model)


class Random:
    """Python's ``random`` as the reference calls it, drawing from a numpy generator."""

    def __init__(self, rng):
        self.rng = rng

    def uniform(self, a, b):
        return self.rng.uniform(a, b)

    def randint(self, a, b):  # inclusive, as random.randint
        return int(self.rng.integers(a, b + 1))


# ---------------------------------------------------------------------------- the reference, ported
def ref_generate_mask(random, lam, mask_token_num_start, width=14, height=14, min_num_patches=1):
    min_aspect = 0.3
    log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros(shape=(height, width), dtype=int)
    mask_ratio = 1 - lam
    num_masking_patches = min(width * height, int(mask_ratio * width * height) + mask_token_num_start)
    max_num_patches = width * height
    mask_count = 0
    while mask_count < num_masking_patches:
        max_mask_patches = num_masking_patches - mask_count
        max_mask_patches = min(max_mask_patches, max_num_patches)
        delta = 0
        for attempt in range(10):
            target_area = random.uniform(min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        if delta == 0:
            break
        else:
            mask_count += delta
    return mask.astype(np.float32), 1 - mask_count / max_num_patches


def ref_generate_mask_random(rng, lam, mask_token_num_start, width=14, height=14):
    mask = np.zeros(shape=(width * height), dtype=int)
    num_masking_patches = min(width * height, int((1 - lam) * width * height) + mask_token_num_start)
    mask_idx = rng.permutation(width * height)[:num_masking_patches]
    mask[mask_idx] = 1
    return mask.reshape(height, width).astype(np.float32), 1 - num_masking_patches / (width * height)


def ref_one_hot(x, num_classes, on_value=1., off_value=0.):
    x = x.long().view(-1, 1)
    return torch.full((x.size()[0], num_classes), off_value).scatter_(1, x, on_value)


def ref_target(label_map, hard_label, mask, label_smoothing, num_classes):
    """The label part of ``Mixup.__call__`` (label maps (B, K, h, w), partners by flipping the batch)."""
    B = len(hard_label)
    y1_nonmask = label_map[torch.arange(B), hard_label, :, :]
    y1_nonmask = y1_nonmask / (y1_nonmask.sum((1, 2), keepdim=True) + 1e-8)
    y2_nonmask = y1_nonmask.flip(0)
    y1_masked = y1_nonmask * (1 - mask)
    y2_masked = y2_nonmask * mask
    y1 = y1_masked.sum((1, 2))
    y2 = y2_masked.sum((1, 2))
    off_value = label_smoothing / num_classes
    on_value1 = y1 - label_smoothing / 2 + off_value / 2
    on_value2 = y2 - label_smoothing / 2 + off_value / 2
    y1 = ref_one_hot(hard_label, num_classes, on_value=on_value1.view(-1, 1), off_value=off_value / 2)
    y2 = ref_one_hot(hard_label.flip(0), num_classes, on_value=on_value2.view(-1, 1), off_value=off_value / 2)
    return y1 + y2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("grid,start", [((14, 14), 14), ((4, 4), 1), ((6, 5), 2)])
def test_block_mask_matches_generate_mask(seed, grid, start):
    gh, gw = grid
    for lam in (0.5, 0.2, 0.9):
        ours = block_mask(np.random.default_rng(seed), gh, gw, lam, start)
        ref = ref_generate_mask(Random(np.random.default_rng(seed)), lam, start, width=gw, height=gh)
        np.testing.assert_array_equal(ours[0], ref[0])
        assert ours[1] == ref[1]


@pytest.mark.parametrize("seed", range(3))
def test_random_mask_matches_generate_mask_random(seed):
    for grid in ((14, 14), (4, 4)):
        ours = random_mask(np.random.default_rng(seed), *grid, 0.5, 3)
        ref = ref_generate_mask_random(np.random.default_rng(seed), 0.5, 3, width=grid[1], height=grid[0])
        np.testing.assert_array_equal(ours[0], ref[0])
        assert ours[1] == ref[1]


def test_the_target_matches_the_reference_on_random_label_maps():
    g = torch.Generator().manual_seed(0)
    b, k = 6, 5
    maps = torch.rand(b, k, 4, 4, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    mask = (torch.rand(4, 4, generator=g) < 0.5).float()
    flip = torch.arange(b).flip(0)
    own = maps[torch.arange(b), y]
    w_a, w_b = tokenmix_weights(own, mask, flip)
    for s in (0.0, 0.1):
        torch.testing.assert_close(tokenmix_target(w_a, w_b, y, y[flip], k, s), ref_target(maps, y, mask, s, k))


def test_the_method_mixes_by_the_drawn_mask_and_trains_on_the_reference_target():
    k, n = 4, 6
    model = tiny_vit(1)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    m = TokenMix(switch_prob=1.0)
    ctx = make_ctx(x, y, k, model, 5)
    m.setup(ctx)
    seen = []
    model.net.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    out = m(model, Batch(x, y, torch.arange(n)), ctx)
    # the same draws: partners, timm's switch (rand for switch_prob, beta), then the block mask
    rng = np.random.default_rng(5)
    perm = torch.from_numpy(rng.permutation(n))
    rng.random(1), rng.beta(1.0, 1.0, 1)
    mask, lam = ref_generate_mask(Random(rng), 0.5, int(16 / 14), width=4, height=4)
    mask = torch.from_numpy(mask)
    m224 = F.interpolate(mask[None, None], size=(8, 8), mode="nearest")
    torch.testing.assert_close(seen[-1], x * (1 - m224) + x[perm] * m224)
    # the teacher's maps: the model itself, eval mode, on the clean batch; own-class softmax per token
    model.eval()
    with torch.no_grad():
        _, tokens = model.patch_tokens(x)
        probs = F.softmax(model.classifier(tokens), -1)
    model.train()
    own = probs[torch.arange(n), :, :, y]
    s1 = own / (own.sum((1, 2), keepdim=True) + 1e-8)
    y1, y2 = (s1 * (1 - mask)).sum((1, 2)), (s1[perm] * mask).sum((1, 2))
    target = tokenmix_target(y1, y2, y, y[perm], k, 0.1)
    want = -(target * F.log_softmax(out.logits, -1)).sum(1).mean()
    torch.testing.assert_close(out.loss, want)
    torch.testing.assert_close(out.lam, y1 / (y1 + y2))


def test_area_target_and_normalized_labels_compose_with_any_loss():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    m = TokenMix(switch_prob=1.0, target="area", labels="normalized")
    ctx = make_ctx(x, y, 4, model)
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(6)), ctx)
    assert out.loss is None and out.lam.unique().numel() == 1
    assert float(out.lam[0]) * 16 == round(float(out.lam[0]) * 16)
    m = TokenMix(switch_prob=1.0, target="attention")
    m.setup(ctx)
    assert m.requires() == {"images", "class_attention"}
    out = m(model, Batch(x, y, torch.arange(6)), ctx)
    assert out.loss is not None and ((out.lam >= 0) & (out.lam <= 1)).all()


def test_mixup_side_of_the_switch_is_plain_mixup():
    model, x, y = tiny_vit(), torch.randn(6, 1, 8, 8), torch.arange(6) % 4
    m = TokenMix(switch_prob=0.0)
    ctx = make_ctx(x, y, 4, model)
    m.setup(ctx)
    out = m(model, Batch(x, y, torch.arange(6)), ctx)
    assert out.loss is None and out.smoothing == 0.1 and out.lam.unique().numel() == 1


@pytest.mark.parametrize("opts,words", [({"mask_type": "grid"}, "mask_type"), ({"target": "teacher"}, "target"),
                                        ({"labels": "x"}, "labels"), ({"mask_ratio": 2}, "mask_ratio"),
                                        ({"min_tokens": -1}, "min_tokens"), ({"cutmix_alpha": 0}, "cutmix_alpha")])
def test_bad_options_are_one_line_errors(opts, words):
    with pytest.raises(PluginError, match=words) as e:
        TokenMix(**opts)
    assert "\n" not in str(e.value)


def exp_file(method: str, model: str, out) -> str:
    return f"""\
    name: tm
    dataset: {{name: digits, fraction: 0.1}}
    model: {model}
    method: {method}
    train: {{epochs: 1, batch_size: 32, optimizer: {{name: adamw, lr: 1.0e-3}}}}
    seeds: [0]
    out: {out}
    """


def test_validate_refuses_a_cnn_and_bad_options_in_one_line(cli, write, tmp_path):
    code, text = cli("validate", write(exp_file("tokenmix", "{name: cnn, width: 4}", tmp_path / "o")))
    assert code == 2 and "no patch tokens" in text and "Traceback" not in text
    code, text = cli("validate", write(exp_file("{name: tokenmix, target: attention}", "{name: cnn, width: 4}",
                                                tmp_path / "o")))
    assert code == 2 and "class-token attention" in text
    code, text = cli("validate", write(exp_file("{name: tokenmix, mask_type: grid}", VIT_YAML, tmp_path / "o")))
    assert code == 2 and "mask_type" in text and "Traceback" not in text


def test_runs_on_digits(cli, write, tmp_path):
    p = write(exp_file("{name: tokenmix, switch_prob: 0.8}", VIT_YAML, tmp_path / "out"))
    assert cli("validate", p)[0] == 0
    code, text = cli("run", p, "--device", "cpu")
    assert code == 0, text
    import pandas as pd
    assert list(pd.read_parquet(tmp_path / "out" / "runs")["status"]) == ["finished"]


def test_patch_tokens_are_the_normed_tokens_the_head_reads():
    m = tiny_vit().eval()
    x = torch.randn(3, 1, 8, 8)
    logits, tokens = m.patch_tokens(x)
    torch.testing.assert_close(logits, m(x))
    feats = m.net.forward_features(x)
    torch.testing.assert_close(tokens, feats[:, 1:].reshape(3, 4, 4, -1))
    torch.testing.assert_close(m.classifier(feats[:, 0]), logits)
    assert tokens.requires_grad
