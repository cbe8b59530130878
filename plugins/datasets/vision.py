"""Image classification datasets: CIFAR-10/100, SVHN, MNIST, Fashion-MNIST and a generic ImageFolder.

Every loader reads the dataset's real on-disk format with a small reader of its own (CIFAR python pickles,
SVHN ``.mat`` files, MNIST IDX files, a folder tree of images). torchvision is used only to *download* the
official archives (``download: true``), with their published checksums.

A data file never runs code. CIFAR's python pickles are read by :class:`CIFARUnpickler`, which admits only
what those files hold (dicts, lists, strings, bytes, numbers and numpy arrays); anything else (e.g. a
pickle calling ``os.system``) is refused before it runs. The CIFAR files are also checked against the MD5
sums of the official release (those torchvision publishes) every time they are loaded; ``checksum: false``
skips that check for files of your own (the safe unpickler is always used).

Images come back as ``uint8`` tensors of shape (N, C, H, W), labels as int64; the validation split, the
long-tail profile and the stratified fraction are applied by :func:`mixcli.data.subsets.build_classification`,
seeded by ``split_seed``.
"""
import gzip
import hashlib
import io
import os
import pickle

import numpy as np
import torch

from mixcli.api import DataBundle, Dataset, PluginError, file_fingerprint
from mixcli.data.subsets import build_classification

__all__ = ["CIFAR10", "CIFAR100", "SVHN", "MNIST", "FashionMNIST", "ImageFolder"]

DEFAULT_ROOT = "~/.cache/mixcli/data"

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------------ helpers
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
    a = np.ascontiguousarray(a if dtype is None else a.astype(dtype, copy=False))
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


def _check_labels(name: str, labels: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PluginError(f"{name}: labels in {path} must be in [0, {num_classes}), "
                          f"found [{labels.min()}, {labels.max()}]; the file looks corrupt")
    return labels


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` compressed or not) of unsigned bytes.

    Header: a big-endian magic number ``0x0000TTNN`` (``TT`` = 0x08 for unsigned bytes, ``NN`` = number of
    dimensions; 2051 for image files, 2049 for label files), then ``NN`` big-endian int32 sizes, then data.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise PluginError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise PluginError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise PluginError(f"{path}: only unsigned-byte IDX files are supported (type code 0x{raw[2]:02x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PluginError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - header != count:
        raise PluginError(f"{path}: IDX header announces {dims} ({count} bytes) but the file holds "
                          f"{len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std (population) of uint8 images (N, C, H, W), in [0, 1] units, in float64."""
    c = x.shape[1]
    s = np.zeros(c, dtype=np.float64)
    s2 = np.zeros(c, dtype=np.float64)
    n = 0
    for i in range(0, x.shape[0], chunk):
        b = x[i: i + chunk].astype(np.float64) / 255.0
        s += b.sum(axis=(0, 2, 3))
        s2 += (b * b).sum(axis=(0, 2, 3))
        n += b.shape[0] * b.shape[2] * b.shape[3]
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class CIFARUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python files and nothing else.

    Plain containers and scalars need no global; a numpy array is rebuilt from exactly three: the
    ``_reconstruct`` function (under numpy 1's and numpy 2's module name), ``ndarray`` and ``dtype``; bytes
    written by Python 3 at protocol 2 or lower come through ``_codecs.encode`` (text to bytes). Every other
    global (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError`` before it is called.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load '{module}.{name}': a CIFAR file holds only dicts, "
                                     "lists, strings and numpy arrays")


def safe_unpickle(data: bytes):
    """``pickle.loads`` restricted to what CIFAR files contain (see :class:`CIFARUnpickler`)."""
    return CIFARUnpickler(io.BytesIO(data), encoding="latin1").load()


def md5_of(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------- base classes
class _ImageDataset(Dataset):
    """Common options (validated here) and the final :func:`build_classification` step."""

    #: published per-channel statistics, in [0, 1] pixel units (None: computed from the training images)
    MEAN: tuple[float, ...] | None = None
    STD: tuple[float, ...] | None = None
    #: padding mode of the random-crop augmentation
    PAD_MODE = "reflect"
    #: number of classes when fixed by the dataset (None: found when loading)
    NUM_CLASSES: int | None = None
    #: input shape (C, H, W) when fixed by the dataset
    SHAPE: tuple[int, int, int] | None = None
    path_options = ("root",)

    def shape(self):
        return (self.SHAPE, self.NUM_CLASSES) if self.SHAPE and self.NUM_CLASSES else None

    def _set_common(self, *, root, fraction, imbalance, val_size, augment, split_seed) -> None:
        name = type(self).__name__
        if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
            raise PluginError(f"{name}: option 'root' must be a non-empty path (a string), got {root!r}")
        if not _is_number(fraction) or not 0 < float(fraction) <= 1:
            raise PluginError(f"{name}: option 'fraction' must be a number in (0, 1], got {fraction!r}")
        if not _is_number(imbalance) or not float(imbalance) >= 1:
            raise PluginError(f"{name}: option 'imbalance' must be a number >= 1 (the ratio of the largest to "
                              f"the smallest class; 1 = balanced), got {imbalance!r}")
        if not _is_int(val_size) or val_size < 0:
            raise PluginError(f"{name}: option 'val_size' must be an integer >= 0 (the total number of "
                              f"validation examples, held out of train), got {val_size!r}")
        if self.NUM_CLASSES and val_size % self.NUM_CLASSES:
            raise PluginError(f"{name}: option 'val_size' must be a multiple of the number of classes "
                              f"({self.NUM_CLASSES}) for a balanced split, got {val_size}")
        if not isinstance(augment, (bool, np.bool_)):
            raise PluginError(f"{name}: option 'augment' must be true or false, got {augment!r}")
        if not _is_int(split_seed) or split_seed < 0:
            raise PluginError(f"{name}: option 'split_seed' must be an integer >= 0, got {split_seed!r}")
        self.root = os.path.expanduser(os.fspath(root))
        self.fraction = float(fraction)
        self.imbalance = float(imbalance)
        self.val_size = int(val_size)
        self.augment = bool(augment)
        self.split_seed = int(split_seed)

    def _read(self) -> dict:  # pragma: no cover - abstract
        """Return ``train_x, train_y, test_x, test_y`` (numpy, uint8 NCHW / int64) and ``class_names``."""
        raise NotImplementedError

    def load(self) -> DataBundle:
        d = self._read()
        class_names = list(d["class_names"])
        mean, std = self.MEAN, self.STD
        if mean is None:
            mean, std = _channel_stats(d["train_x"])
        return build_classification(
            _tensor(d["train_x"]), d["train_y"], _tensor(d["test_x"]), _tensor(d["test_y"], np.int64),
            num_classes=len(class_names), fraction=self.fraction, imbalance=self.imbalance,
            val_size=self.val_size, split_seed=self.split_seed, augment=self.augment, mean=mean, std=std,
            pad=4, pad_mode=self.PAD_MODE, class_names=class_names)


class _DownloadableDataset(_ImageDataset):
    """A dataset with a fixed file layout under ``root`` that torchvision can download."""

    def __init__(self, root: str = DEFAULT_ROOT, download: bool = False, fraction: float = 1.0,
                 imbalance: float = 1.0, val_size: int = 0, augment: bool = True, split_seed: int = 0):
        if not isinstance(download, (bool, np.bool_)):
            raise PluginError(f"{type(self).__name__}: option 'download' must be true or false, got {download!r}")
        self.download = bool(download)
        self._set_common(root=root, fraction=fraction, imbalance=imbalance, val_size=val_size, augment=augment,
                         split_seed=split_seed)

    def _missing(self) -> list[str]:  # pragma: no cover - abstract
        """Expected paths that do not exist."""
        raise NotImplementedError

    def _files(self) -> list[str]:  # pragma: no cover - abstract
        """The data files (those present)."""
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """Size and modification time of the data files (None with ``download: true``: official files)."""
        return None if self.download else file_fingerprint(*self._files())

    def _download(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ensure_files(self) -> None:
        missing = self._missing()
        if missing and self.download:
            try:
                self._download()
            except PluginError:
                raise
            except Exception as e:  # network errors, bad checksums, ...
                raise PluginError(f"{type(self).__name__}: download into {self.root} failed: {e}") from e
            missing = self._missing()
            if missing:
                raise PluginError(f"{type(self).__name__}: download finished but {missing[0]} is still missing")
        elif missing:
            more = f" (and {len(missing) - 1} more file(s))" if len(missing) > 1 else ""
            raise PluginError(f"{type(self).__name__}: data file {missing[0]} not found{more}; set "
                              f"`download: true` to fetch the dataset, or `root:` to the folder that holds it")


class _UnflippedDataset(_DownloadableDataset):
    """Digits and similar: augmentation (crop + horizontal flip) is off by default."""

    def __init__(self, root: str = DEFAULT_ROOT, download: bool = False, fraction: float = 1.0,
                 imbalance: float = 1.0, val_size: int = 0, augment: bool = False, split_seed: int = 0):
        super().__init__(root=root, download=download, fraction=fraction, imbalance=imbalance,
                         val_size=val_size, augment=augment, split_seed=split_seed)


# --------------------------------------------------------------------------------------------------- CIFAR
class _CIFAR(_DownloadableDataset):
    FOLDER = ""
    TRAIN_FILES: tuple[str, ...] = ()
    TEST_FILES: tuple[str, ...] = ()
    META_FILE = ""
    LABEL_KEY = ""
    NAMES_KEY = ""
    TV_CLASS = ""
    SHAPE = (3, 32, 32)
    #: MD5 of each file of the official release (as published by torchvision)
    MD5: dict[str, str] = {}

    def __init__(self, root: str = DEFAULT_ROOT, download: bool = False, checksum: bool = True,
                 fraction: float = 1.0, imbalance: float = 1.0, val_size: int = 0, augment: bool = True,
                 split_seed: int = 0):
        if not isinstance(checksum, (bool, np.bool_)):
            raise PluginError(f"{type(self).__name__}: option 'checksum' must be true or false, got {checksum!r}")
        self.checksum = bool(checksum)
        super().__init__(root=root, download=download, fraction=fraction, imbalance=imbalance,
                         val_size=val_size, augment=augment, split_seed=split_seed)

    @property
    def folder(self) -> str:
        return os.path.join(self.root, self.FOLDER)

    def _names(self) -> tuple[str, ...]:
        return self.TRAIN_FILES + self.TEST_FILES + (self.META_FILE,)

    def _missing(self) -> list[str]:
        return [p for p in (os.path.join(self.folder, n) for n in self._names()) if not os.path.isfile(p)]

    def _files(self) -> list[str]:
        return [p for p in (os.path.join(self.folder, n) for n in self._names()) if os.path.isfile(p)]

    def fingerprint(self) -> str | None:
        """None when the checksums are verified (the official files); else size and time of the files."""
        return None if self.checksum else file_fingerprint(*self._files())

    def _verify(self) -> None:
        for name in self._names():
            path = os.path.join(self.folder, name)
            got = md5_of(path)
            if got != self.MD5[name]:
                raise PluginError(f"{type(self).__name__}: {path} is not the official file (MD5 {got}, expected "
                                  f"{self.MD5[name]}); delete it and set `download: true`, or set "
                                  "`checksum: false` to use files of your own")

    def _download(self) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets import utils as tv_utils

        cls = getattr(tvd, self.TV_CLASS)
        tv_utils.download_and_extract_archive(cls.url, self.root, filename=cls.filename, md5=cls.tgz_md5)

    @staticmethod
    def _unpickle(path: str) -> dict:
        try:
            with open(path, "rb") as f:
                return safe_unpickle(f.read())
        except Exception as e:  # noqa: BLE001 - refused globals, truncated or corrupt files
            raise PluginError(f"cannot read CIFAR file {path}: {e}") from None

    def _read_batch(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(self.folder, name)
        d = self._unpickle(path)
        if not isinstance(d, dict) or "data" not in d or self.LABEL_KEY not in d:
            raise PluginError(f"{path}: expected a pickled dict with keys 'data' and '{self.LABEL_KEY}'")
        x = np.asarray(d["data"], dtype=np.uint8)
        y = _check_labels(type(self).__name__, d[self.LABEL_KEY], self.NUM_CLASSES, path)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.shape[0] != y.shape[0]:
            raise PluginError(f"{path}: expected 'data' of shape (N, 3072) with N = {y.shape[0]} labels, "
                              f"got {x.shape}")
        # rows are channel-major: 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
        return x.reshape(-1, 3, 32, 32), y

    def _read(self) -> dict:
        self._ensure_files()
        if self.checksum:
            self._verify()
        train = [self._read_batch(n) for n in self.TRAIN_FILES]
        test = [self._read_batch(n) for n in self.TEST_FILES]
        meta_path = os.path.join(self.folder, self.META_FILE)
        meta = self._unpickle(meta_path)
        names = meta.get(self.NAMES_KEY) if isinstance(meta, dict) else None
        if names is None or len(names) != self.NUM_CLASSES:
            raise PluginError(f"{meta_path}: expected '{self.NAMES_KEY}' with {self.NUM_CLASSES} class names")
        return dict(train_x=np.concatenate([x for x, _ in train]), train_y=np.concatenate([y for _, y in train]),
                    test_x=np.concatenate([x for x, _ in test]), test_y=np.concatenate([y for _, y in test]),
                    class_names=[str(n) for n in names])


class CIFAR10(_CIFAR):
    """CIFAR-10: 32x32 colour images, 10 classes (50,000 train / 10,000 test)."""

    paper = "Krizhevsky, 2009"
    NUM_CLASSES = 10
    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2616)
    FOLDER = "cifar-10-batches-py"
    TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_FILES = ("test_batch",)
    META_FILE = "batches.meta"
    LABEL_KEY = "labels"
    NAMES_KEY = "label_names"
    TV_CLASS = "CIFAR10"
    MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
           "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
           "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
           "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}


class CIFAR100(_CIFAR):
    """CIFAR-100: 32x32 colour images, 100 fine classes (50,000 train / 10,000 test)."""

    paper = "Krizhevsky, 2009"
    NUM_CLASSES = 100
    MEAN = (0.5071, 0.4865, 0.4409)
    STD = (0.2673, 0.2564, 0.2762)
    FOLDER = "cifar-100-python"
    TRAIN_FILES = ("train",)
    TEST_FILES = ("test",)
    META_FILE = "meta"
    LABEL_KEY = "fine_labels"
    NAMES_KEY = "fine_label_names"
    TV_CLASS = "CIFAR100"
    MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
           "meta": "7973b15100ade9c7d40fb424638fde48"}


# ---------------------------------------------------------------------------------------------------- SVHN
class SVHN(_UnflippedDataset):
    """SVHN: 32x32 colour street-view house-number digits, 10 classes (73,257 train / 26,032 test)."""

    paper = "Netzer et al., 2011"
    NUM_CLASSES = 10
    MEAN = (0.4377, 0.4438, 0.4728)
    STD = (0.1980, 0.2010, 0.1970)
    PAD_MODE = "constant"
    SHAPE = (3, 32, 32)
    FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

    def _missing(self) -> list[str]:
        return [p for p in (os.path.join(self.root, f) for f in self.FILES.values()) if not os.path.isfile(p)]

    def _files(self) -> list[str]:
        return [p for p in (os.path.join(self.root, f) for f in self.FILES.values()) if os.path.isfile(p)]

    def _download(self) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets import utils as tv_utils

        for split, fname in self.FILES.items():
            if not os.path.isfile(os.path.join(self.root, fname)):
                url, filename, md5 = tvd.SVHN.split_list[split]
                tv_utils.download_url(url, self.root, filename=filename, md5=md5)

    def _read_mat(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        import scipy.io

        path = os.path.join(self.root, name)
        try:
            m = scipy.io.loadmat(path)
        except Exception as e:
            raise PluginError(f"cannot read SVHN file {path}: {e}") from e
        if "X" not in m or "y" not in m:
            raise PluginError(f"{path}: expected variables 'X' and 'y'")
        x, y = np.asarray(m["X"]), np.asarray(m["y"]).astype(np.int64).reshape(-1)
        if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
            raise PluginError(f"{path}: expected 'X' of shape (H, W, 3, N) with N = {y.shape[0]} labels, "
                              f"got {x.shape}")
        y = np.where(y == 10, 0, y)  # the digit 0 is stored as label 10
        y = _check_labels("SVHN", y, 10, path)
        return np.ascontiguousarray(x.astype(np.uint8, copy=False).transpose(3, 2, 0, 1)), y

    def _read(self) -> dict:
        self._ensure_files()
        train_x, train_y = self._read_mat(self.FILES["train"])
        test_x, test_y = self._read_mat(self.FILES["test"])
        return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                    class_names=[str(i) for i in range(10)])


# ------------------------------------------------------------------------------------------- MNIST family
class _IDXDataset(_UnflippedDataset):
    """The torchvision layout ``root/<Name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, or the
    four files directly in ``root`` (the flat layout of Debian's dataset packages, e.g. ``apt-get install
    dataset-fashion-mnist``: ``root: /usr/share/datasets/fashion-mnist``)."""

    NUM_CLASSES = 10
    PAD_MODE = "constant"
    SHAPE = (1, 28, 28)
    FOLDER = ""
    CLASS_NAMES: tuple[str, ...] = ()
    FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, self.FOLDER, "raw")

    def _path(self, name: str) -> str | None:
        """The uncompressed file if present, else the gzipped one, in ``raw_folder`` and then directly in
        ``root`` (the flat layout); else None."""
        for folder in (self.raw_folder, self.root):
            p = os.path.join(folder, name)
            for cand in (p, p + ".gz"):
                if os.path.isfile(cand):
                    return cand
        return None

    def _missing(self) -> list[str]:
        return [os.path.join(self.raw_folder, n) for n in self.FILES.values() if self._path(n) is None]

    def _files(self) -> list[str]:
        return [p for p in (self._path(n) for n in self.FILES.values()) if p is not None]

    def _download(self) -> None:
        import torchvision.datasets as tvd
        from torchvision.datasets import utils as tv_utils

        cls = getattr(tvd, self.FOLDER)
        os.makedirs(self.raw_folder, exist_ok=True)
        for filename, md5 in cls.resources:
            if self._path(filename[:-3] if filename.endswith(".gz") else filename) is not None:
                continue
            errors = []
            for mirror in cls.mirrors:
                try:
                    tv_utils.download_and_extract_archive(f"{mirror}{filename}", download_root=self.raw_folder,
                                                          filename=filename, md5=md5)
                    break
                except Exception as e:
                    errors.append(f"{mirror}: {e}")
            else:
                raise PluginError(f"{type(self).__name__}: could not download {filename}: " + "; ".join(errors))

    def _read(self) -> dict:
        self._ensure_files()
        out = {}
        for key, name in self.FILES.items():
            path = self._path(name)
            a = read_idx(path)
            if key.endswith("_x"):
                if a.ndim != 3:
                    raise PluginError(f"{path}: expected an image file (3 dimensions), got shape {a.shape}")
                out[key] = a[:, None]  # (N, 1, H, W)
            else:
                if a.ndim != 1:
                    raise PluginError(f"{path}: expected a label file (1 dimension), got shape {a.shape}")
                out[key] = _check_labels(type(self).__name__, a, self.NUM_CLASSES, path)
        for split in ("train", "test"):
            if out[f"{split}_x"].shape[0] != out[f"{split}_y"].shape[0]:
                raise PluginError(f"{type(self).__name__}: {split} images and labels differ in number "
                                  f"({out[f'{split}_x'].shape[0]} vs {out[f'{split}_y'].shape[0]})")
        out["class_names"] = list(self.CLASS_NAMES)
        return out


class MNIST(_IDXDataset):
    """MNIST: 28x28 grayscale handwritten digits, 10 classes (60,000 train / 10,000 test)."""

    paper = "LeCun et al., 1998"
    MEAN = (0.1307,)
    STD = (0.3081,)
    FOLDER = "MNIST"
    CLASS_NAMES = tuple(str(i) for i in range(10))


class FashionMNIST(_IDXDataset):
    """Fashion-MNIST: 28x28 grayscale clothing images, 10 classes (60,000 train / 10,000 test)."""

    paper = "Xiao et al., 2017"
    MEAN = (0.2860,)
    STD = (0.3530,)
    FOLDER = "FashionMNIST"
    CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


# --------------------------------------------------------------------------------------------- ImageFolder
class ImageFolder(_ImageDataset):
    """Images in class subfolders of root/train and root/test (or root/val), resized to image_size squares."""

    def __init__(self, root: str, image_size: int = 64, fraction: float = 1.0, imbalance: float = 1.0,
                 val_size: int = 0, augment: bool = True, split_seed: int = 0):
        if not _is_int(image_size) or image_size < 1:
            raise PluginError(f"ImageFolder: option 'image_size' must be a positive integer (pixels), "
                              f"got {image_size!r}")
        self.image_size = int(image_size)
        self._set_common(root=root, fraction=fraction, imbalance=imbalance, val_size=val_size, augment=augment,
                         split_seed=split_seed)

    def shape(self):
        """(3, image_size, image_size) and the number of class folders under root/train (when it exists)."""
        train = os.path.join(self.root, "train")
        if not os.path.isdir(train):
            return None
        n = sum(os.path.isdir(os.path.join(train, d)) for d in os.listdir(train))
        return ((3, self.image_size, self.image_size), n) if n else None

    def fingerprint(self) -> str | None:
        """The contents (small folders) or the sizes and times (large ones) of every file under root."""
        return file_fingerprint(self.root)

    @staticmethod
    def _images(folder: str) -> list[str]:
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                      if f.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))

    def _load_split(self, folder: str, class_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        files, labels = [], []
        for cls in sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))):
            if cls not in class_index:
                raise PluginError(f"ImageFolder: class folder {os.path.join(folder, cls)} has no counterpart "
                                  f"in {os.path.join(self.root, 'train')}")
            imgs = self._images(os.path.join(folder, cls))
            files += imgs
            labels += [class_index[cls]] * len(imgs)
        if not files:
            raise PluginError(f"ImageFolder: no images found in the class subfolders of {folder} "
                              f"(extensions: {', '.join(IMG_EXTENSIONS)})")
        s = self.image_size
        x = np.empty((len(files), 3, s, s), dtype=np.uint8)
        for i, path in enumerate(files):
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    if im.size != (s, s):
                        im = im.resize((s, s), Image.Resampling.BILINEAR)
                    x[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
            except Exception as e:
                raise PluginError(f"ImageFolder: cannot read image {path}: {e}") from e
        return x, np.asarray(labels, dtype=np.int64)

    def _read(self) -> dict:
        train_dir = os.path.join(self.root, "train")
        if not os.path.isdir(train_dir):
            raise PluginError(f"ImageFolder: folder {train_dir} not found; `root:` must hold train/ and test/ "
                              f"(or val/) folders with one subfolder per class")
        test_dir = next((p for p in (os.path.join(self.root, d) for d in ("test", "val")) if os.path.isdir(p)), None)
        if test_dir is None:
            raise PluginError(f"ImageFolder: folder {os.path.join(self.root, 'test')} (or "
                              f"{os.path.join(self.root, 'val')}) not found; `root:` must hold train/ and test/ "
                              f"folders with one subfolder per class")
        classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
        if not classes:
            raise PluginError(f"ImageFolder: {train_dir} has no class subfolders")
        for c in classes:
            if not self._images(os.path.join(train_dir, c)):
                raise PluginError(f"ImageFolder: class folder {os.path.join(train_dir, c)} holds no images")
        index = {c: i for i, c in enumerate(classes)}
        train_x, train_y = self._load_split(train_dir, index)
        test_x, test_y = self._load_split(test_dir, index)
        return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, class_names=classes)
