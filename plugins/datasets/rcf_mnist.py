"""RCF-MNIST: rotated and coloured Fashion-MNIST, the out-of-distribution regression benchmark of C-Mixup.

Yao, Wang, Zhang, Zou, Finn, "C-Mixup: Improving Generalization in Regression", NeurIPS 2022 (RCF-MNIST
is its "subpopulation shift" set). Built from the Fashion-MNIST files the way the official generation
script does (``huaxiuyao/C-Mixup`` ``src/data/RCF_MNIST.py``, ``get_RCF_MNIST_data_packet`` with the
``RCF_MNIST`` settings of ``src/config.py``: ``spurious_ratio`` 0.8, ``all_pos_color`` 0):

1. the 60,000 *training* images of Fashion-MNIST are split at random into 40,000 train, 10,000 val and
   10,000 test images (``random_split(train_set, (40000, 10000, 10000))``);
2. each image, grey (``Grayscale(3)``, three equal channels) is rotated by ``d ~ U[0, 360)`` degrees:
   ``ToTensor``, ``Normalize(0.5, 0.5)``, back to [0, 1], ``ToPILImage`` (``mul(255).byte()``, truncation),
   ``PIL.Image.rotate(d)`` (nearest neighbour, the corners filled black), ``ToTensor``; the label is
   ``y = d / 360`` (float32);
3. colour, with a ratio ``r`` per image: every channel value above ``5/255`` becomes ``R * r`` (red),
   ``0`` (green) and ``B * (1 - r)`` (blue); values at or below ``5/255`` (the background) stay.
   Train: a random 80% of the images (``np.random.choice(..., int(0.8 N), replace=False)``) get ``r = y``,
   the other 20% ``r = 1 - y`` (colour spuriously correlated with the angle). Test: inverted, the 80% get
   ``r = 1 - y`` and the 20% ``r = y``. Val: ``r ~ U(0, 1)`` (no correlation);
4. the images go to the network normalized as the script stores them, ``(x - 0.5) * 2`` in [-1, 1],
   float32 of shape (N, 3, 28, 28); labels (N, 1).

The random draws (split, angles, the 80% subset, val ratios) come from generators seeded by ``data_seed``
(default 0), so every run, method and seed sees the same data set (the script draws from unseeded
global generators once and stores the result; its files are not public here). ``domain`` is 0 for the
images coloured with the majority rule of their split and 1 for the others (the script's ``idx2assay``),
so ``worst_domain_rmse`` is reported.

Options: ``root`` (the folder holding ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
flat as Debian's ``dataset-fashion-mnist`` package installs them, or in torchvision's
``FashionMNIST/raw/``; default ``/usr/share/datasets/fashion-mnist``), ``data_seed``, ``spurious_ratio``
(0.8), ``fraction`` (1.0: keep the first ``fraction`` of each generated split, for quick runs; the
images kept are the same whatever the fraction, only fewer).
"""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np
import torch

from mixcli.api import DataBundle, Dataset, PluginError, Split, file_fingerprint

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
SIZES = (40000, 10000, 10000)  # train, val, test, from the 60,000 training images
COLOR_LOWER = 5 / 255
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def read_idx_bytes(path: str) -> np.ndarray:
    """An unsigned-byte IDX file (the MNIST format; ``.gz`` or not)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise PluginError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PluginError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    if len(raw) - header != int(np.prod(dims)):
        raise PluginError(f"{path}: the IDX header announces {dims} but the file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_file(root: str, name: str) -> str | None:
    for folder in (root, os.path.join(root, "FashionMNIST", "raw")):
        for cand in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
            if os.path.isfile(cand):
                return cand
    return None


def rotate_like_reference(img: np.ndarray, degree: float) -> np.ndarray:
    """Step 2 for one grey uint8 image (H, W): float32 (3, H, W) in [0, 1] after the script's rotation."""
    from PIL import Image

    t = torch.from_numpy(np.array(img)).float().div(255)  # ToTensor (of the Grayscale(3) image)
    t = (t - 0.5) / 0.5                                  # Normalize([0.5] * 3, [0.5] * 3)
    t = t / 2 + 0.5                                      # rotate_img: unnormalize
    b = t.mul(255).byte().numpy()                        # ToPILImage of a float tensor
    rot = np.asarray(Image.fromarray(np.stack([b] * 3, -1), mode="RGB").rotate(degree))
    r = torch.from_numpy(np.array(rot)).permute(2, 0, 1).float().div(255)  # ToTensor
    r = (r - 0.5) * 2.0                                  # normalize
    return (r / 2 + 0.5).numpy()                         # img_torch2numpy: unnormalize


def red_blue(x: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Step 3 (the script's ``red_blue_linear_map``) on images (N, 3, H, W) in [0, 1], ratios (N,)."""
    r = ratio.astype(np.float32).reshape(-1, 1, 1)
    out = x.copy()
    out[:, 0] = np.where(x[:, 0] > COLOR_LOWER, x[:, 0] * r, x[:, 0])
    out[:, 1] = np.where(x[:, 1] > COLOR_LOWER, 0, x[:, 1])
    out[:, 2] = np.where(x[:, 2] > COLOR_LOWER, x[:, 2] * (1 - r), x[:, 2])
    return out


@functools.lru_cache(maxsize=2)
def build(root: str, data_seed: int, spurious_ratio: float):
    """The three splits ``{name: (x float32 (N, 3, 28, 28) in [-1, 1], y (N, 1), domain (N,), ratio (N,))}``."""
    paths = [find_file(root, f) for f in FILES]
    if None in paths:
        missing = [f for f, p in zip(FILES, paths) if p is None]
        raise PluginError(f"rcf_mnist: {', '.join(missing)}[.gz] not found in {root} (nor in "
                          f"{os.path.join(root, 'FashionMNIST', 'raw')}); install Fashion-MNIST "
                          "(apt-get install dataset-fashion-mnist puts it in /usr/share/datasets/fashion-mnist) "
                          "or set root: to the folder that holds it")
    images = read_idx_bytes(paths[0])
    if images.ndim != 3 or len(images) < sum(SIZES):
        raise PluginError(f"rcf_mnist: {paths[0]} holds {images.shape}, expected at least {sum(SIZES)} images")
    g = torch.Generator().manual_seed(data_seed)
    perm = torch.randperm(len(images), generator=g).tolist()  # random_split's draw
    rng = np.random.default_rng(data_seed)
    out, start = {}, 0
    for name, n in zip(("train", "val", "test"), SIZES):
        idx = perm[start:start + n]
        start += n
        degree = torch.rand(n, generator=g) * 360.0                          # float32, as torch.rand(1) * 360
        y = (degree / 360.0).numpy().astype(np.float32)
        x = np.stack([rotate_like_reference(images[i], float(d)) for i, d in zip(idx, degree.tolist())])
        domain = np.zeros(n, dtype=np.int64)
        if name == "val":
            ratio = rng.random(n)
        else:
            normal = rng.choice(n, size=int(n * spurious_ratio), replace=False)
            domain[:] = 1
            domain[normal] = 0
            ratio = np.where(domain == 0, y, 1.0 - y) if name == "train" else np.where(domain == 0, 1.0 - y, y)
        x = (red_blue(x, ratio) - 0.5) * 2                                     # img_numpy2torch
        out[name] = (x.astype(np.float32), y.reshape(-1, 1), domain, ratio.astype(np.float32))
    return out


class RCFMNIST(Dataset):
    """RCF-MNIST (C-Mixup, NeurIPS 2022): Fashion-MNIST rotated by d ~ U[0, 360), label d / 360, coloured
    red-to-blue by the angle for 80% of training images and inversely at test (40k / 10k / 10k).

    See the module docstring for the construction, step by step as the official generation script.
    """

    task = "regression"
    paper = "Yao et al., C-Mixup: Improving Generalization in Regression, NeurIPS 2022"
    path_options = ("root",)

    def __init__(self, root: str = DEFAULT_ROOT, data_seed: int = 0, spurious_ratio: float = 0.8,
                 fraction: float = 1.0):
        if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
            raise PluginError(f"rcf_mnist: root must be a folder (a non-empty string), got {root!r}")
        if isinstance(data_seed, bool) or not isinstance(data_seed, int):
            raise PluginError(f"rcf_mnist: data_seed must be an integer, got {data_seed!r}")
        if isinstance(spurious_ratio, bool) or not isinstance(spurious_ratio, (int, float)) \
                or not 0 <= spurious_ratio <= 1:
            raise PluginError(f"rcf_mnist: spurious_ratio must be in [0, 1], got {spurious_ratio!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise PluginError(f"rcf_mnist: fraction must be in (0, 1], got {fraction!r}")
        self.root = os.path.expanduser(os.fspath(root))
        self.data_seed, self.spurious_ratio, self.fraction = data_seed, float(spurious_ratio), float(fraction)

    def shape(self):
        return (3, 28, 28), 1

    def fingerprint(self) -> str | None:
        return file_fingerprint(*[p for p in (find_file(self.root, f) for f in FILES) if p])

    def load(self) -> DataBundle:
        data = build(self.root, self.data_seed, self.spurious_ratio)
        splits = {}
        for name, (x, y, domain, _) in data.items():
            n = max(1, int(round(len(x) * self.fraction)))
            splits[name] = Split(torch.from_numpy(x[:n]), torch.from_numpy(y[:n]), torch.from_numpy(domain[:n]))
        return DataBundle(task="regression", train=splits["train"], val=splits["val"], test=splits["test"])
