"""SaliencyMix's fine-grained saliency against OpenCV's StaticSaliencyFineGrained on natural images.

The images are crops of the two photographs scikit-learn ships (``load_sample_images``, offline). The
tolerance is exact equality of the 8-bit maps (OpenCV 5's python binding returns them divided by 255), hence
the same peak. Needs ``opencv-contrib-python-headless`` (the ``dev`` extra); skipped without it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_images

from mixcli.api import Batch, Context, DataBundle, Split
from mixcli_plugins.methods.saliencymix import SaliencyMix, fine_grained_saliency, saliency_peak

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "saliency"):
    pytest.skip("OpenCV without the contrib saliency module", allow_module_level=True)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` random ``size`` x ``size`` RGB crops (uint8, N x H x W x 3) of the bundled photographs."""
    imgs = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        im = imgs[k % len(imgs)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(im[y:y + size, x:x + size])
    return np.stack(out)


def opencv_map(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's map of one RGB uint8 image (given to OpenCV in its BGR order), as 8-bit levels 0..255."""
    ok, m = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    m = np.asarray(m)
    return m.astype(np.float64) if m.dtype == np.uint8 else np.round(m.astype(np.float64) * 255)


def as_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("size,n", [(32, 48), (8, 8), (77, 6), (128, 3)])
def test_fine_grained_map_equals_opencv(size, n):
    rgb = crops(n, size, seed=size)
    got = fine_grained_saliency(as_batch(rgb)).numpy()  # the whole batch at once
    assert got.shape == (n, size, size)
    for i in range(n):
        want = opencv_map(rgb[i])
        np.testing.assert_array_equal(got[i], want)  # tolerance: none, every 8-bit level equal
        assert np.argmax(got[i]) == np.argmax(want)  # hence the same peak (the first maximum, row-major)
    # the maps are not trivial: they spread over the levels
    assert got.max() == 255 and np.unique(got).size > 20


def test_peak_of_normalized_batch_is_opencvs_peak_of_the_image():
    rgb = crops(16, 32, seed=3)
    x = (as_batch(rgb) / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    r, c = saliency_peak(x, "fine_grained", CIFAR_MEAN, CIFAR_STD)
    for i in range(16):
        want = np.unravel_index(np.argmax(opencv_map(rgb[i])), (32, 32))
        assert (int(r[i]), int(c[i])) == tuple(int(v) for v in want)


class Capture:
    def __init__(self, k):
        self.k, self.x = k, None

    def __call__(self, x):
        self.x = x
        return torch.zeros(x.shape[0], self.k)


def test_saliencymix_pastes_the_official_box_at_opencvs_peak():
    """The official step: lam ~ Beta, the partner permutation, OpenCV's peak (row, col) of the first row's
    partner, a box of sides int(H sqrt(1 - lam)) centred there (half-sides floor-divided, clipped), the
    partner's pixels pasted into every row, and lam corrected to 1 - box area / (H W)."""
    n, h, alpha = 8, 32, 1.0
    rgb = crops(n, h, seed=9)
    y = torch.arange(n)
    x = (as_batch(rgb) / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    split = Split(torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).contiguous(), y)
    data = DataBundle(task="classification", train=split, test=split, num_classes=n, mean=CIFAR_MEAN, std=CIFAR_STD)
    for seed in range(5):
        ctx = Context(task="classification", num_classes=n, device=torch.device("cpu"),
                      rng=np.random.default_rng(seed), train=split, fetch=lambda i: (x[i], y[i]), epochs=1, data=data)
        m, model = SaliencyMix(alpha=alpha), Capture(n)
        m.setup(ctx)
        out = m(model, Batch(x, y, y), ctx)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        lam = rng.beta(alpha, alpha)
        cut = int(h * math.sqrt(1 - lam))
        pr, pc = np.unravel_index(np.argmax(opencv_map(rgb[perm[0]])), (h, h))
        y1, y2 = np.clip(pr - cut // 2, 0, h), np.clip(pr + cut // 2, 0, h)
        x1, x2 = np.clip(pc - cut // 2, 0, h), np.clip(pc + cut // 2, 0, h)
        want = x.clone()
        want[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
        torch.testing.assert_close(model.x, want)
        assert out.y_b.tolist() == y[perm].tolist()
        np.testing.assert_allclose(out.lam.numpy(), 1 - (y2 - y1) * (x2 - x1) / (h * h), rtol=1e-6)
