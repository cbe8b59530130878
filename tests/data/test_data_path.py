"""The device data path (mixcli.data.device.DeviceData) against an independent per-image reference, and
``train.compile`` through the engine on CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixcli.api import DataBundle, PluginError
from mixcli.data.device import DeviceData
from image_bundles import MEAN, STD, bundle  # noqa: F401 (MEAN, STD: the bundles' normalisation)

def reference(data: DataBundle, index: torch.Tensor, seed: int) -> torch.Tensor:
    """Pad each image with F.pad, cut its crop, flip it: one image at a time, with the offsets and flips
    drawn in the documented order (row offsets, column offsets, flips) from a generator seeded alike."""
    g = torch.Generator().manual_seed(seed)
    b, p = len(index), data.pad
    x = data.train.x[index].float()
    _, c, h, w = x.shape
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g) if p else torch.zeros(b, dtype=torch.long)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g) if p else torch.zeros(b, dtype=torch.long)
    flip = torch.rand(b, generator=g) < 0.5 if data.flip else torch.zeros(b, dtype=torch.bool)
    out = []
    for i in range(b):
        img = F.pad(x[i:i + 1], (p, p, p, p), mode=data.pad_mode)[0] if p else x[i]
        img = img[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(img.flip(2) if flip[i] else img)
    out = torch.stack(out) / 255.0
    if data.mean is not None:
        out = (out - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "replicate", "circular"])
@pytest.mark.parametrize("flip", [True, False])
def test_train_batch_matches_reference(pad_mode, flip):
    data = bundle(pad_mode=pad_mode, flip=flip)
    dd = DeviceData(data, torch.device("cpu"), seed=5)
    index = torch.tensor([3, 0, 7, 7, 19, 11, 2, 23])
    x, y = dd.fetch(index)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 12, 10)
    torch.testing.assert_close(x, reference(data, index, seed=5), rtol=0, atol=1e-5)
    assert torch.equal(y, data.train.y[index])


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_channels_last_gather_matches_reference(pad_mode):
    """The CUDA layout (images stored and batches made channels_last), exercised on the CPU."""
    data = bundle(pad_mode=pad_mode)
    dd = DeviceData(data, torch.device("cpu"), seed=2)
    dd.channels_last = True
    dd.splits["train"].x = dd.train.x.contiguous(memory_format=torch.channels_last)
    index = torch.tensor([1, 4, 4, 9, 22])
    x = dd.fetch(index)[0]
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, reference(data, index, seed=2), rtol=0, atol=1e-5)
    xe, _ = next(dd.eval_batches("test", 5))
    assert xe.is_contiguous(memory_format=torch.channels_last)


def test_small_pad_gray_images_without_stats():
    data = bundle(c=1, h=8, w=8, pad=1, pad_mode="constant", flip=False)  # the digits setting
    dd = DeviceData(data, torch.device("cpu"), seed=0)
    index = torch.arange(24)
    torch.testing.assert_close(dd.fetch(index)[0], reference(data, index, seed=0), rtol=0, atol=1e-6)


def test_crops_and_flips_vary_and_stay_inside_the_padded_image():
    data = bundle(n=4, h=6, w=6, pad=2, pad_mode="constant", mean=None, std=None)
    data.train.x[:] = 255  # then a crop's zeros are exactly the padding it shows
    dd = DeviceData(data, torch.device("cpu"), seed=0)
    seen = set()
    for _ in range(60):
        x = dd.fetch(torch.arange(4))[0]
        for img in x[:, 0]:
            ones = (img == 1.0).nonzero()
            r0, c0 = int(ones[:, 0].min()), int(ones[:, 1].min())
            r1, c1 = int(ones[:, 0].max()), int(ones[:, 1].max())
            assert (r1 - r0 + 1) >= 4 and (c1 - c0 + 1) >= 4  # at most 2 pixels of padding on a side
            assert int((img == 1.0).sum()) == (r1 - r0 + 1) * (c1 - c0 + 1)  # one rectangle of image
            seen.add((r0, c0, r1, c1))
    assert len(seen) == 25  # every one of the 5 x 5 offsets occurs


def test_no_augmentation_and_eval_are_plain_normalization():
    data = bundle(augment=False)
    dd = DeviceData(data, torch.device("cpu"), seed=0)
    expect = (data.train.x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    batch = next(dd.train_batches(24))
    torch.testing.assert_close(batch.x, expect[batch.index], rtol=0, atol=1e-5)
    x, _ = next(dd.eval_batches("test", 3))
    torch.testing.assert_close(x, expect[:3], rtol=0, atol=1e-5)
    # prepare(train=True) of a batch equals the batch gather from the stored split, same generator state
    a = DeviceData(bundle(), torch.device("cpu"), seed=3)
    b = DeviceData(bundle(), torch.device("cpu"), seed=3)
    idx = torch.tensor([5, 1, 9])
    torch.testing.assert_close(a.prepare(a.train.x[idx], train=True), b.fetch(idx)[0], rtol=0, atol=0)


def test_epoch_covers_each_example_once_and_is_seeded():
    dd = DeviceData(bundle(n=25), torch.device("cpu"), seed=0)
    idx = torch.cat([b.index for b in dd.train_batches(8)])
    assert len(idx) == 24 and len(set(idx.tolist())) == 24  # the partial batch is dropped
    again = DeviceData(bundle(n=25), torch.device("cpu"), seed=0)
    for b1, b2 in zip(DeviceData(bundle(n=25), torch.device("cpu"), seed=0).train_batches(8),
                      again.train_batches(8)):
        assert torch.equal(b1.index, b2.index) and torch.equal(b1.x, b2.x)


def test_bad_padding():
    with pytest.raises(PluginError, match="pad_mode must be reflect, replicate, circular or constant"):
        DeviceData(bundle(pad_mode="wrap"), torch.device("cpu"), 0)
    with pytest.raises(PluginError, match="reflect padding needs pad < image size"):
        DeviceData(bundle(h=4, w=4, pad=4), torch.device("cpu"), 0)


# ------------------------------------------------------------------------------------ torch.compile on CPU
def test_compiled_stages_match_eager_at_every_position():
    from mixcli.training.engine import compile_stages
    from mixcli.registry import REGISTRY

    torch.manual_seed(0)
    m = REGISTRY.get("models", "cnn")((3, 8, 8), 4, width=4).eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        eager = [m.forward_to(x, k) for k in range(m.embed_position + 1)]
        logits = m(x)
    plain_keys = set(m.state_dict())
    compile_stages(m)
    with torch.no_grad():
        for k in range(m.embed_position + 1):
            torch.testing.assert_close(m.forward_to(x, k), eager[k], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.forward_from(eager[k], k), logits, rtol=1e-4, atol=1e-5)
    from mixcli.training.checkpoints import uncompiled as _uncompiled
    assert set(_uncompiled({"model": m.state_dict()})["model"]) == plain_keys


def test_run_with_compile_on_cpu_and_checkpoint_loads_into_a_plain_model(cli, write, tmp_path):
    from mixcli.registry import REGISTRY

    out = tmp_path / "out"
    code, text = cli("run", write("""\
        name: compiled
        dataset: {name: digits}
        model: {name: mlp, widths: [16]}
        method: {name: manifold_mixup, positions: [0, 1]}
        train: {epochs: 1, batch_size: 128, compile: true}
        """), "--out", out, "--device", "cpu")
    assert code == 0, text
    ckpt = next((out / "jobs").glob("*/checkpoint.pt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    plain = REGISTRY.get("models", "mlp")((1, 8, 8), 10, widths=[16])
    plain.load_state_dict(state["model"])  # strict: no _orig_mod prefixes left
