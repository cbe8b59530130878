"""Image dataset plugins on small files written here in each dataset's real on-disk format (nothing downloads)."""
import gzip
import inspect
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from mixcli.api import DataBundle, Dataset, PluginError
from mixcli.data.subsets import long_tail_counts
from mixcli_plugins.datasets import vision
from mixcli_plugins.datasets.vision import CIFAR10, CIFAR100, MNIST, SVHN, FashionMNIST, ImageFolder

ALL = [CIFAR10, CIFAR100, SVHN, MNIST, FashionMNIST, ImageFolder]
FIXED = [CIFAR10, CIFAR100, SVHN, MNIST, FashionMNIST]


# ------------------------------------------------------------------------------------------- fake writers
def pattern(n, c, h, w, offset=0):
    """A deterministic image stack (N, C, H, W) whose every axis changes the value."""
    i, ch, r, col = np.meshgrid(np.arange(n), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return ((i * 7 + ch * 101 + r * 3 + col * 5 + offset) % 256).astype(np.uint8)


def balanced_labels(k, per_class):
    return np.tile(np.arange(k), per_class)  # interleaved: 0, 1, ..., k-1, 0, 1, ...


def write_cifar10(root, per_class_train=12, per_class_test=3):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    y = balanced_labels(10, per_class_train)
    x = pattern(len(y), 3, 32, 32)
    x[0, 0], x[0, 1], x[0, 2] = 255, 0, 128  # image 0: pure (255, 0, 128)
    for b, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        with open(os.path.join(folder, f"data_batch_{b}"), "wb") as f:
            pickle.dump({"data": x[part].reshape(len(part), 3072), "labels": y[part].tolist(),
                         "batch_label": f"training batch {b} of 5"}, f)
    ty = balanced_labels(10, per_class_test)
    tx = pattern(len(ty), 3, 32, 32, offset=17)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": tx.reshape(len(ty), 3072), "labels": ty.tolist()}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    return x, y, tx, ty, names


def write_cifar100(root, per_class_train=2, per_class_test=1):
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    y = balanced_labels(100, per_class_train)
    x = pattern(len(y), 3, 32, 32, offset=3)
    ty = balanced_labels(100, per_class_test)
    tx = pattern(len(ty), 3, 32, 32, offset=9)
    for name, xs, ys in (("train", x, y), ("test", tx, ty)):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": xs.reshape(len(ys), 3072), "fine_labels": ys.tolist(),
                         "coarse_labels": (ys // 5).tolist()}, f)
    names = [f"class_{i:03d}" for i in range(100)]
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return x, y, tx, ty, names


def write_svhn(root, per_class_train=12, per_class_test=3):
    import scipy.io

    os.makedirs(root, exist_ok=True)
    out = []
    for name, per, off in (("train_32x32.mat", per_class_train, 0), ("test_32x32.mat", per_class_test, 40)):
        y = balanced_labels(10, per)
        x = pattern(len(y), 3, 32, 32, offset=off)
        stored_y = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)  # digit 0 is label 10 on disk
        scipy.io.savemat(os.path.join(root, name), {"X": x.transpose(2, 3, 1, 0), "y": stored_y})
        out += [x, y]
    return out


def idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_idx_dataset(root, folder, gz, per_class_train=12, per_class_test=3):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    y = balanced_labels(10, per_class_train)
    x = pattern(len(y), 1, 28, 28)[:, 0]
    ty = balanced_labels(10, per_class_test)
    tx = pattern(len(ty), 1, 28, 28, offset=5)[:, 0]
    files = {"train-images-idx3-ubyte": x, "train-labels-idx1-ubyte": y,
             "t10k-images-idx3-ubyte": tx, "t10k-labels-idx1-ubyte": ty}
    for name, a in files.items():
        data = idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(raw, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(raw, name), "wb") as f:
                f.write(data)
    return x[:, None], y, tx[:, None], ty


def write_image_folder(root, classes=("cat", "dog", "emu"), per_class=4, test_name="test", size=8):
    from PIL import Image

    images = {}
    for split, per in (("train", per_class), (test_name, 2)):
        for ci, cls in enumerate(classes):
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            for j in range(per):
                arr = pattern(1, 3, size, size, offset=ci * 31 + j * 11 + (0 if split == "train" else 100))[0]
                path = os.path.join(d, f"img_{j:02d}.png")
                Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).save(path)
                images[(split, cls, j)] = arr
    return images


# ---------------------------------------------------------------------------------------- plugin shape
@pytest.mark.parametrize("cls", ALL)
def test_plugin_metadata(cls):
    assert issubclass(cls, Dataset)
    assert cls.description() and "\n" not in cls.description()
    params = inspect.signature(cls).parameters
    for opt in ("root", "fraction", "imbalance", "val_size", "augment", "split_seed"):
        assert opt in params
    if cls is ImageFolder:
        assert params["root"].default is inspect.Parameter.empty
        assert params["image_size"].default == 64
        assert params["augment"].default is True
    else:
        assert params["root"].default == "~/.cache/mixcli/data"
        assert params["download"].default is False
        assert params["augment"].default is (cls in (CIFAR10, CIFAR100))
    assert params["fraction"].default == 1.0 and params["imbalance"].default == 1.0
    assert params["val_size"].default == 0 and params["split_seed"].default == 0


# -------------------------------------------------------------------------------------------- loaders
def check_bundle(b, n_train, n_test, shape, k):
    assert isinstance(b, DataBundle)
    assert b.task == "classification" and b.num_classes == k
    for s, n in ((b.train, n_train), (b.test, n_test)):
        assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
        assert tuple(s.x.shape) == (n, *shape)
        assert s.y.shape == (n,)
        assert int(s.y.min()) >= 0 and int(s.y.max()) < k
    assert len(b.mean) == shape[0] and len(b.std) == shape[0]


def test_cifar10_roundtrip(tmp_path):
    x, y, tx, ty, names = write_cifar10(str(tmp_path))
    b = CIFAR10(root=str(tmp_path), checksum=False).load()
    check_bundle(b, 120, 30, (3, 32, 32), 10)
    assert torch.equal(b.train.x, torch.from_numpy(x)) and torch.equal(b.train.y, torch.from_numpy(y))
    assert torch.equal(b.test.x, torch.from_numpy(tx)) and torch.equal(b.test.y, torch.from_numpy(ty))
    # channel-major rows: the first 1024 bytes are the red plane
    assert b.train.x[0, :, 5, 7].tolist() == [255, 0, 128]
    assert b.class_names == names
    assert b.mean == (0.4914, 0.4822, 0.4465) and b.std == (0.2470, 0.2435, 0.2616)
    assert b.augment is True and b.pad == 4 and b.pad_mode == "reflect"
    assert b.val is None


def test_cifar100_roundtrip(tmp_path):
    x, y, tx, ty, names = write_cifar100(str(tmp_path))
    b = CIFAR100(root=str(tmp_path), checksum=False, augment=False).load()
    check_bundle(b, 200, 100, (3, 32, 32), 100)
    assert torch.equal(b.train.x, torch.from_numpy(x)) and torch.equal(b.train.y, torch.from_numpy(y))
    assert torch.equal(b.test.x, torch.from_numpy(tx)) and torch.equal(b.test.y, torch.from_numpy(ty))
    assert b.class_names == names
    assert b.mean == (0.5071, 0.4865, 0.4409) and b.std == (0.2673, 0.2564, 0.2762)
    assert b.augment is False


def test_svhn_roundtrip(tmp_path):
    x, y, tx, ty = write_svhn(str(tmp_path))
    b = SVHN(root=str(tmp_path)).load()
    check_bundle(b, 120, 30, (3, 32, 32), 10)
    assert torch.equal(b.train.x, torch.from_numpy(x)) and torch.equal(b.train.y, torch.from_numpy(y))
    assert torch.equal(b.test.x, torch.from_numpy(tx)) and torch.equal(b.test.y, torch.from_numpy(ty))
    assert (b.train.y == 0).sum() == 12  # label 10 on disk -> digit 0
    assert b.class_names == [str(i) for i in range(10)]
    assert b.mean == (0.4377, 0.4438, 0.4728) and b.std == (0.1980, 0.2010, 0.1970)
    assert b.augment is False


@pytest.mark.parametrize("cls,folder", [(MNIST, "MNIST"), (FashionMNIST, "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, cls, folder, gz):
    x, y, tx, ty = write_idx_dataset(str(tmp_path), folder, gz)
    b = cls(root=str(tmp_path)).load()
    check_bundle(b, 120, 30, (1, 28, 28), 10)
    assert torch.equal(b.train.x, torch.from_numpy(x)) and torch.equal(b.train.y, torch.from_numpy(y))
    assert torch.equal(b.test.x, torch.from_numpy(tx)) and torch.equal(b.test.y, torch.from_numpy(ty))
    assert b.augment is False
    if cls is MNIST:
        assert b.class_names == [str(i) for i in range(10)]
        assert b.mean == (0.1307,) and b.std == (0.3081,)
    else:
        assert b.class_names[0] == "T-shirt/top" and b.class_names[9] == "Ankle boot"
        assert b.mean == (0.2860,) and b.std == (0.3530,)


def test_idx_reader_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(PluginError, match="magic"):
        vision.read_idx(str(p))
    p.write_bytes(struct.pack(">II", 0x0801, 10) + b"\x00" * 5)  # announces 10 bytes, holds 5
    with pytest.raises(PluginError, match="10"):
        vision.read_idx(str(p))
    ok = tmp_path / "ok"
    ok.write_bytes(struct.pack(">IIII", 2051, 2, 3, 4) + bytes(range(24)))
    assert vision.read_idx(str(ok)).tolist() == np.arange(24).reshape(2, 3, 4).tolist()


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_image_folder_roundtrip(tmp_path, test_name):
    images = write_image_folder(str(tmp_path), test_name=test_name, size=8)
    b = ImageFolder(root=str(tmp_path), image_size=8).load()
    check_bundle(b, 12, 6, (3, 8, 8), 3)
    assert b.class_names == ["cat", "dog", "emu"]
    assert b.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert b.test.y.tolist() == [0] * 2 + [1] * 2 + [2] * 2
    for i, (cls, j) in enumerate([(c, j) for c in ("cat", "dog", "emu") for j in range(4)]):
        assert b.train.x[i].numpy().tolist() == images[("train", cls, j)].tolist()
    for i, (cls, j) in enumerate([(c, j) for c in ("cat", "dog", "emu") for j in range(2)]):
        assert b.test.x[i].numpy().tolist() == images[(test_name, cls, j)].tolist()
    # mean / std computed from the training images
    xf = b.train.x.double() / 255
    assert np.allclose(b.mean, xf.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(b.std, xf.std(dim=(0, 2, 3), unbiased=False).numpy())
    assert b.augment is True


def test_image_folder_resize_and_grayscale(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            Image.new("L", (10, 6), color=77).save(d / "g.png")
            Image.new("RGB", (5, 9), color=(1, 2, 3)).save(d / "c.jpg", quality=100)
            (d / "notes.txt").write_text("not an image")
    b = ImageFolder(root=str(tmp_path), image_size=16).load()
    assert tuple(b.train.x.shape) == (4, 3, 16, 16)
    assert b.train.y.tolist() == [0, 0, 1, 1]
    # sorted file order: c.jpg then g.png; grayscale is converted to RGB (all channels equal)
    assert (b.train.x[1] == 77).all()
    assert b.class_names == ["a", "b"]


def test_image_folder_errors(tmp_path):
    with pytest.raises(PluginError, match=str(tmp_path / "train")):
        ImageFolder(root=str(tmp_path)).load()
    write_image_folder(str(tmp_path / "x"), test_name="other")
    with pytest.raises(PluginError, match="test"):
        ImageFolder(root=str(tmp_path / "x")).load()
    write_image_folder(str(tmp_path / "y"))
    os.makedirs(tmp_path / "y" / "test" / "zebra")
    with pytest.raises(PluginError, match="zebra"):
        ImageFolder(root=str(tmp_path / "y"), image_size=8).load()
    write_image_folder(str(tmp_path / "z"))
    (tmp_path / "z" / "train" / "dog" / "img_00.png").write_bytes(b"garbage")
    with pytest.raises(PluginError, match="img_00.png"):
        ImageFolder(root=str(tmp_path / "z"), image_size=8).load()


# ------------------------------------------------------------------------------------------- subsets
def test_long_tail_counts_reference():
    assert sum(long_tail_counts(5000, 10, 100)) == 12406
    assert sum(long_tail_counts(500, 100, 100)) == 10847
    # on a CIFAR-10-shaped label vector, through the shared subset code
    from mixcli.data.subsets import long_tail
    labels = balanced_labels(10, 5000)
    keep = long_tail(labels, 100)
    assert len(keep) == 12406
    assert np.bincount(labels[keep]).tolist() == long_tail_counts(5000, 10, 100)


def test_cifar10_long_tail_through_plugin(tmp_path):
    write_cifar10(str(tmp_path), per_class_train=50)
    b = CIFAR10(root=str(tmp_path), checksum=False, imbalance=10).load()
    counts = torch.bincount(b.train.y, minlength=10).tolist()
    assert counts == [math.floor(50 * 10 ** (-i / 9)) for i in range(10)]
    assert counts[0] == 50 and counts[-1] == 5
    assert len(b.test) == 30  # the test set is never subsampled


def _rows(b):
    """Identify training rows by their (unique) image content."""
    return sorted(bytes(r.numpy().tobytes()) for r in b.train.x)


def test_fraction_stratified_and_seeded(tmp_path):
    write_cifar10(str(tmp_path), per_class_train=20)
    b0 = CIFAR10(root=str(tmp_path), checksum=False, fraction=0.25, split_seed=0).load()
    b0_again = CIFAR10(root=str(tmp_path), checksum=False, fraction=0.25, split_seed=0).load()
    b1 = CIFAR10(root=str(tmp_path), checksum=False, fraction=0.25, split_seed=1).load()
    for b in (b0, b1):
        assert torch.bincount(b.train.y, minlength=10).tolist() == [5] * 10
    assert torch.equal(b0.train.x, b0_again.train.x) and torch.equal(b0.train.y, b0_again.train.y)
    assert _rows(b0) != _rows(b1)
    # at least one example of every class, even for tiny fractions
    tiny = CIFAR10(root=str(tmp_path), checksum=False, fraction=0.01).load()
    assert torch.bincount(tiny.train.y, minlength=10).tolist() == [1] * 10


def test_val_split_balanced_and_disjoint(tmp_path):
    x, y, *_ = write_cifar10(str(tmp_path), per_class_train=12)
    b = CIFAR10(root=str(tmp_path), checksum=False, val_size=30, split_seed=3).load()
    assert b.val is not None and len(b.val) == 30
    assert torch.bincount(b.val.y, minlength=10).tolist() == [3] * 10
    assert torch.bincount(b.train.y, minlength=10).tolist() == [9] * 10
    train_rows, val_rows = set(_rows(b)), {bytes(r.numpy().tobytes()) for r in b.val.x}
    assert not train_rows & val_rows
    assert len(train_rows | val_rows) == 120
    # val with the other two subsets: all seeded by split_seed
    b2 = CIFAR10(root=str(tmp_path), checksum=False, val_size=20, imbalance=2, fraction=0.5, split_seed=3).load()
    b2_again = CIFAR10(root=str(tmp_path), checksum=False, val_size=20, imbalance=2, fraction=0.5, split_seed=3).load()
    assert torch.equal(b2.val.x, b2_again.val.x) and torch.equal(b2.train.x, b2_again.train.x)
    assert torch.bincount(b2.val.y, minlength=10).tolist() == [2] * 10


def test_val_size_too_large(tmp_path):
    write_cifar10(str(tmp_path), per_class_train=12)
    with pytest.raises(PluginError, match="val_size"):
        CIFAR10(root=str(tmp_path), checksum=False, val_size=120).load()


# ------------------------------------------------------------------------------------ missing files
@pytest.mark.parametrize("cls,expected", [
    (CIFAR10, os.path.join("cifar-10-batches-py", "data_batch_1")),
    (CIFAR100, os.path.join("cifar-100-python", "train")),
    (SVHN, "train_32x32.mat"),
    (MNIST, os.path.join("MNIST", "raw", "train-images-idx3-ubyte")),
    (FashionMNIST, os.path.join("FashionMNIST", "raw", "train-images-idx3-ubyte")),
])
def test_missing_files(tmp_path, cls, expected):
    with pytest.raises(PluginError) as e:
        cls(root=str(tmp_path)).load()
    msg = str(e.value)
    assert os.path.join(str(tmp_path), expected) in msg
    assert "download: true" in msg and "root:" in msg


def test_partially_missing_files_named(tmp_path):
    write_cifar10(str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(PluginError, match="test_batch"):
        CIFAR10(root=str(tmp_path), checksum=False).load()


def test_root_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cifar10(str(tmp_path / "data"))
    assert len(CIFAR10(root="~/data", checksum=False).load().train) == 120


# ---------------------------------------------------------------------------- download (faked, offline)
def test_download_uses_torchvision_then_our_reader(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append((url, download_root, filename, md5))
        write_cifar10(download_root)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    b = CIFAR10(root=str(tmp_path), checksum=False, download=True).load()
    assert len(b.train) == 120
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path),
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    CIFAR10(root=str(tmp_path), checksum=False, download=True).load()  # files present: no second download
    assert len(calls) == 1


def test_mnist_download_tries_mirrors(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append(url)
        if "ossci" in url:
            raise RuntimeError("mirror down")
        name = filename[:-3]
        a = {"train-images-idx3-ubyte": np.zeros((20, 28, 28)), "train-labels-idx1-ubyte": np.arange(20) % 10,
             "t10k-images-idx3-ubyte": np.zeros((10, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(10)}[name]
        with open(os.path.join(download_root, name), "wb") as f:
            f.write(idx_bytes(a))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    b = MNIST(root=str(tmp_path), download=True).load()
    assert len(b.train) == 20 and len(b.test) == 10
    assert len(calls) == 8  # 4 files x 2 mirrors (the first one fails)


def test_download_failure_is_plugin_error(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tv_utils

    def fail(url, root, filename=None, md5=None, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_url", fail)
    with pytest.raises(PluginError, match="network unreachable"):
        SVHN(root=str(tmp_path), download=True).load()


# ------------------------------------------------------------------------------------------ bad options
BAD = [
    ("fraction", 0), ("fraction", 1.5), ("fraction", -0.1), ("fraction", "half"), ("fraction", True),
    ("imbalance", 0.5), ("imbalance", 0), ("imbalance", "10"),
    ("val_size", -10), ("val_size", 2.5), ("val_size", "100"), ("val_size", True),
    ("augment", "yes"), ("augment", 1),
    ("split_seed", -1), ("split_seed", 1.5), ("split_seed", None),
    ("root", ""), ("root", 3),
]


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("option,value", BAD)
def test_bad_options(tmp_path, cls, option, value):
    kwargs = {"root": str(tmp_path)}
    kwargs[option] = value
    with pytest.raises(PluginError) as e:
        cls(**kwargs)
    assert option in str(e.value)


@pytest.mark.parametrize("cls", FIXED)
def test_bad_download_and_val_multiple(cls, tmp_path):
    with pytest.raises(PluginError, match="download"):
        cls(root=str(tmp_path), download="yes")
    with pytest.raises(PluginError, match="val_size"):
        cls(root=str(tmp_path), val_size=cls.NUM_CLASSES + 1)


@pytest.mark.parametrize("value", [0, -3, 2.5, "64"])
def test_bad_image_size(tmp_path, value):
    with pytest.raises(PluginError, match="image_size"):
        ImageFolder(root=str(tmp_path), image_size=value)


def test_image_folder_val_multiple_checked_on_load(tmp_path):
    write_image_folder(str(tmp_path))
    with pytest.raises(PluginError, match="val_size"):
        ImageFolder(root=str(tmp_path), image_size=8, val_size=4).load()
    b = ImageFolder(root=str(tmp_path), image_size=8, val_size=3).load()
    assert torch.bincount(b.val.y).tolist() == [1, 1, 1]


def test_good_option_values_accepted(tmp_path):
    d = CIFAR10(root=str(tmp_path), checksum=False, fraction=1, imbalance=100, val_size=5000, augment=False, split_seed=7)
    assert (d.fraction, d.imbalance, d.val_size, d.augment, d.split_seed) == (1.0, 100.0, 5000, False, 7)
