"""RCF-MNIST against the official generation script's definition (huaxiuyao/C-Mixup src/data/RCF_MNIST.py):
its torchvision/PIL rotation pipeline and red_blue_linear_map ported and fed the same angles and ratios, on a
tiny Fashion-MNIST written by the test; and the fashion_mnist dataset reading Debian's flat folder."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from scipy import stats

from mixcli_plugins.datasets import rcf_mnist as R

transforms = pytest.importorskip("torchvision.transforms")


def write_idx(path, a: np.ndarray):
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A flat folder of 80 random 28x28 'clothes' (a bright blob on black) and the split sizes 40/20/20."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    imgs = []
    for _ in range(80):
        cy, cx, r = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(4, 9)
        blob = np.clip(255 * (1.2 - np.hypot(yy - cy, xx - cx) / r), 0, 255) * (rng.random((28, 28)) * 0.5 + 0.5)
        imgs.append(blob)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.array(imgs))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 80))
    monkeypatch.setattr(R, "SIZES", (40, 20, 20))
    R.build.cache_clear()
    yield tmp_path, np.array(imgs).astype(np.uint8)
    R.build.cache_clear()


# ----------------------------------------------------------------------- the script's functions, ported

def ref_load(img_uint8):
    """FashionMNIST(transform=Compose([Grayscale(3), ToTensor(), Normalize([.5]*3, [.5]*3)]))[i]."""
    from PIL import Image

    t = transforms.Compose([transforms.Grayscale(3), transforms.ToTensor(),
                            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])
    return t(Image.fromarray(img_uint8, mode="L"))


def ref_rotate_img(img, degree):
    img = img / 2 + 0.5
    pil_img = transforms.ToPILImage()(img)
    r_img = pil_img.rotate(degree)
    r_img = transforms.ToTensor()(r_img)
    return (r_img - 0.5) * 2.0


def ref_red_blue_linear_map(imgt, red_ratio):
    color_lower_bound = 5 / 255
    imgt[..., 0] = np.where(imgt[..., 0] > color_lower_bound, imgt[..., 0] * red_ratio, imgt[..., 0])
    imgt[..., 1] = np.where(imgt[..., 1] > color_lower_bound, 0, imgt[..., 1])
    imgt[..., 2] = np.where(imgt[..., 2] > color_lower_bound, imgt[..., 2] * (1 - red_ratio), imgt[..., 2])
    return imgt


def test_every_image_is_the_scripts_construction(tiny):
    root, imgs = tiny
    data = R.build(str(root), 3, 0.8)
    g = torch.Generator().manual_seed(3)  # the plugin's draws, in its order: split, then angles per split
    perm = torch.randperm(80, generator=g).tolist()
    start = 0
    for name, n in zip(("train", "val", "test"), (40, 20, 20)):
        degree = torch.rand(n, generator=g) * 360.0
        x, y, domain, ratio = data[name]
        np.testing.assert_array_equal(y[:, 0], (degree / 360.0).numpy())  # label = degree / 360, float32
        for k in range(n):
            r_img = ref_rotate_img(ref_load(imgs[perm[start + k]]), float(degree[k]))
            hwc = np.transpose((r_img / 2 + 0.5).numpy(), (1, 2, 0)).copy()  # img_torch2numpy
            col = ref_red_blue_linear_map(hwc, ratio[k])
            ref = (torch.tensor(np.transpose(col, (2, 0, 1))) - 0.5) * 2        # img_numpy2torch
            np.testing.assert_allclose(x[k], ref.numpy(), atol=1e-6)
        start += n
        if name == "val":
            assert (domain == 0).all() and stats.kstest(ratio, "uniform").pvalue > 1e-3
        else:
            assert (domain == 0).sum() == int(n * 0.8)  # np.random.choice(idx, int(num * 0.8), replace=False)
            majority = ratio[domain == 0]
            want = y[domain == 0, 0] if name == "train" else 1 - y[domain == 0, 0]
            np.testing.assert_allclose(majority, want, rtol=1e-6)
            minority_want = 1 - y[domain == 1, 0] if name == "train" else y[domain == 1, 0]
            np.testing.assert_allclose(ratio[domain == 1], minority_want, rtol=1e-6)


def test_colour_correlates_with_the_angle_in_train_and_inversely_at_test(tiny):
    root, _ = tiny
    data = R.build(str(root), 0, 0.8)
    r_train = stats.pearsonr(data["train"][3], data["train"][1][:, 0])[0]
    r_test = stats.pearsonr(data["test"][3], data["test"][1][:, 0])[0]
    assert r_train > 0.3 and r_test < -0.3  # 0.6 and -0.6 in expectation (0.8 - 0.2)


def test_dataset_plugin_options_and_fraction(tiny, cli, write):
    root, _ = tiny
    from mixcli.api import PluginError

    ds = R.RCFMNIST(root=str(root), fraction=0.5).load()
    assert ds.task == "regression" and ds.train.x.shape == (20, 3, 28, 28) and ds.train.y.shape == (20, 1)
    assert ds.val.x.shape[0] == 10 and ds.test.x.shape[0] == 10 and ds.train.x.dtype == torch.float32
    full = R.RCFMNIST(root=str(root)).load()
    torch.testing.assert_close(ds.train.x, full.train.x[:20])  # a fraction keeps the first images
    with pytest.raises(PluginError, match="fraction must be in"):
        R.RCFMNIST(fraction=0)
    with pytest.raises(PluginError, match="not found in"):
        R.RCFMNIST(root=str(root / "nothing")).load()
    code, text = cli("validate", write("""\
        name: rcf
        task: regression
        dataset: {name: rcf_mnist, spurious_ratio: 2}
        model: {name: cnn, width: 4}
        seeds: [0]
        """))
    assert code == 2 and "spurious_ratio must be in [0, 1]" in text


def test_fashion_mnist_reads_the_flat_debian_folder(tmp_path):
    from mixcli.registry import REGISTRY

    rng = np.random.default_rng(1)
    for split, n in (("train", 30), ("t10k", 12)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    d = REGISTRY.get("datasets", "fashion_mnist")(root=str(tmp_path)).load()
    assert d.train.x.shape[1:] == (1, 28, 28) and len(d.test.y) == 12
