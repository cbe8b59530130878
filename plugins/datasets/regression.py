"""Regression datasets: UCI Airfoil Self-Noise, any CSV/TSV file, scikit-learn's diabetes set, and a
synthetic 1-D set with multi-modal labels. Reading, splitting and scaling live in :mod:`mixcli.data.tabular`.

Every loader splits with a seeded shuffle that depends on ``split_seed`` only (identical data for every run
seed). The C-Mixup reference code shuffles with the *run* seed instead (``np.random.seed(seed)`` then
``np.random.permutation(N)``), so its three seeds are three different splits; ``split_per_seed: true``
reproduces exactly that (see :func:`mixcli.data.tabular.build_regression`).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request

import numpy as np

from mixcli.api import DataBundle, Dataset, PluginError, file_fingerprint
from mixcli.data.tabular import (DELIMITERS, SCALINGS, build_regression, check_split, numeric_columns, read_header,
                            read_table)

DEFAULT_ROOT = "~/.cache/mixcli/data"
AIRFOIL_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00291/airfoil_self_noise.dat"
AIRFOIL_FILE = "airfoil_self_noise.dat"
AIRFOIL_COLUMNS = ["frequency_hz", "angle_deg", "chord_m", "velocity_m_s", "thickness_m", "sound_db"]


def _check_common(split, split_seed, scaling, split_per_seed=False) -> None:
    if not isinstance(split_per_seed, bool):
        raise PluginError(f"split_per_seed must be true or false, got {split_per_seed!r}")
    check_split(split)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise PluginError(f"split_seed must be an integer, got {split_seed!r}")
    if scaling not in SCALINGS:
        raise PluginError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")


def _check_path(name: str, value, nullable: bool = True, hint: str = "") -> str | None:
    """A path option; a file path (``hint`` given) must exist, so a typo fails before any run starts."""
    if value is None and nullable:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise PluginError(f"{name} must be a file path (a non-empty string), got {value!r}")
    path = os.path.expanduser(os.fspath(value))
    if hint and not os.path.isfile(path):
        raise PluginError(f"{name} {path}: no such file{hint}")
    return path


class Airfoil(Dataset):
    """UCI Airfoil Self-Noise (NASA, 1503 x 5 features -> sound pressure in dB), the C-Mixup regression set.

    Brooks, Pope & Marcolini (1989), UCI ML repository (CC BY 4.0). The file is tab-separated (any
    whitespace is accepted), no header, six numeric columns: frequency (Hz), angle of attack (deg), chord
    length (m), free-stream velocity (m/s), suction-side displacement thickness (m), and the target, the
    scaled sound pressure level (dB, raw units, about 103-141, shape (N, 1)).

    - ``path``: the ``.dat`` file. Without it the file is ``<root>/airfoil_self_noise.dat``, fetched from the
      UCI archive when ``download: true`` (urllib; a clear error when offline).
    - ``split``: [train, val, test] as row counts (the reference's hard-coded 1003 / 300 / 200) or fractions;
      a seeded shuffle (``split_seed``) then a cut in that order, as in the reference loader;
      ``split_per_seed: true`` shuffles with the run seed instead (the reference's exact split per seed).
    - ``scaling``: ``minmax_train`` (default: min and max from the training rows only) or ``minmax_all``
      (the reference's choice: min and max over all 1503 rows) or ``none``.
    """

    task = "regression"
    paper = "Brooks, Pope & Marcolini, Airfoil Self-Noise and Prediction, NASA RP-1218, 1989 (UCI)"
    path_options = ("path", "root")

    def __init__(self, path: str | None = None, download: bool = False, root: str = DEFAULT_ROOT,
                 split: list = (1003, 300, 200), split_seed: int = 0, split_per_seed: bool = False,
                 scaling: str = "minmax_train"):
        self.path = _check_path("path", path, hint=" (give the UCI airfoil_self_noise.dat, or leave path "
                                                   "out and set download: true)")
        self.root = _check_path("root", root, nullable=False)
        if not isinstance(download, bool):
            raise PluginError(f"download must be true or false, got {download!r}")
        _check_common(split, split_seed, scaling, split_per_seed)
        self.download, self.split, self.split_seed, self.scaling = download, list(split), split_seed, scaling
        self.split_per_seed = split_per_seed

    def shape(self):
        return (5,), 1

    def fingerprint(self) -> str | None:
        """The SHA-256 of a file given by ``path`` (it is small); None for the UCI file under ``root`` (the
        official data, so that the run id is the same before and after ``download: true`` fetches it)."""
        return file_fingerprint(self.path) if self.path else None

    def _file(self) -> str:
        if self.path is not None:
            return self.path
        target = os.path.join(self.root, AIRFOIL_FILE)
        if os.path.isfile(target):
            return target
        if not self.download:
            raise PluginError(f"{target} is missing: set `download: true` to fetch it from the UCI archive, "
                              "or `path:` to a local copy of airfoil_self_noise.dat")
        fetch(AIRFOIL_URL, target)
        return target

    def load(self) -> DataBundle:
        path = self._file()
        df = read_table(path, delimiter="whitespace", header=False)
        if df.shape[1] != 6:
            raise PluginError(f"{path}: expected 6 whitespace-separated columns per line (5 features and the "
                              f"sound level in dB), found {df.shape[1]}")
        data = numeric_columns(df, list(df.columns), path, header=False)
        return build_regression(data[:, :5], data[:, 5:], split=self.split, split_seed=self.split_seed,
                                scaling=self.scaling, split_per_seed=self.split_per_seed)


def fetch(url: str, target: str, timeout: float = 30.0) -> None:
    """Download ``url`` to ``target`` (atomically: a partial file never takes its name)."""
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = target + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            f.write(resp.read())
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PluginError(f"could not download {url} ({getattr(exc, 'reason', exc)}); are you offline? "
                          f"Download it by hand and pass `path:` (or put it at {target})") from None
    os.replace(tmp, target)


class CSV(Dataset):
    """Any CSV / TSV file with a header row: feature columns, target column(s), an optional domain column.

    - ``path`` (required) and ``targets`` (required: a list of column names; several give a (N, D) target).
    - ``features``: the input columns (default: every column that is neither a target nor the domain).
    - ``domain``: a column naming each row's domain / group (any values, at least two distinct); reported as
      ``worst_domain_rmse`` (the max over test domains of the per-domain rmse). The split stays a random
      row split (in-distribution).
    - ``split`` ([0.7, 0.1, 0.2], the C-Mixup ratio), ``split_seed``, ``split_per_seed``, ``scaling`` (see
      mixcli.data.tabular).
    - ``delimiter``: auto (tab if the first line has one, else comma, else semicolon, else whitespace),
      comma, tab, semicolon, whitespace, or any single character.

    Every feature and target cell must be a finite number; the first bad cell is reported with its line
    and column.
    """

    task = "regression"
    path_options = ("path",)

    def __init__(self, path: str, targets: list, features: list | None = None, domain: str | None = None,
                 split: list = (0.7, 0.1, 0.2), split_seed: int = 0, split_per_seed: bool = False,
                 scaling: str = "minmax_train", delimiter: str = "auto"):
        self.path = _check_path("path", path, nullable=False, hint=" (a CSV or TSV file with a header row)")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) for t in targets):
            raise PluginError(f"targets must be a non-empty list of column names, got {targets!r}")
        if features is not None and (not isinstance(features, (list, tuple)) or not features
                                     or not all(isinstance(c, str) for c in features)):
            raise PluginError(f"features must be a non-empty list of column names (or left out), got {features!r}")
        if domain is not None and not isinstance(domain, str):
            raise PluginError(f"domain must be a column name, got {domain!r}")
        if not isinstance(delimiter, str) or (delimiter not in DELIMITERS and len(delimiter) != 1):
            raise PluginError(f"delimiter must be one of {', '.join(DELIMITERS)} or a single character, "
                              f"got {delimiter!r}")
        _check_common(split, split_seed, scaling, split_per_seed)
        self.split_per_seed = split_per_seed
        self.targets, self.features, self.domain = list(targets), features and list(features), domain
        self.split, self.split_seed, self.scaling, self.delimiter = list(split), split_seed, scaling, delimiter

    def shape(self):
        """From the header row (also checked here: unique names, every named column present)."""
        cols = read_header(self.path, self.delimiter)
        return (len(self._columns(cols)),), len(self.targets)

    def _columns(self, cols: list[str]) -> list[str]:
        """The feature columns, after checking that every named column exists."""
        named = [("targets", c) for c in self.targets] + [("features", c) for c in self.features or []]
        if self.domain is not None:
            named.append(("domain", self.domain))
        for option, col in named:
            if col not in cols:
                raise PluginError(f"{self.path}: no column '{col}' (from {option}); the file's columns are: "
                                  f"{', '.join(cols)}")
        taken = set(self.targets) | {self.domain}
        features = self.features or [c for c in cols if c not in taken]
        overlap = set(features) & taken
        if overlap:
            raise PluginError(f"column(s) {', '.join(sorted(overlap))} cannot be both a feature and a target/domain")
        if not features:
            raise PluginError(f"{self.path}: no feature columns left (all columns are targets or the domain)")
        return features

    def fingerprint(self) -> str | None:
        """The file's SHA-256 below 16 MiB, else its size and modification time."""
        return file_fingerprint(self.path)

    def load(self) -> DataBundle:
        df = read_table(self.path, self.delimiter, header=True)
        features = self._columns(list(df.columns))
        y = numeric_columns(df, self.targets, self.path, what="label")
        x = numeric_columns(df, features, self.path, what="feature value")
        dom = None
        if self.domain is not None:
            values = df[self.domain].astype(str).str.strip()
            names, dom = np.unique(values.to_numpy(), return_inverse=True)
            if len(names) < 2:
                raise PluginError(f"{self.path}: the domain column '{self.domain}' has a single value "
                                  f"({names[0]!r} in all {len(values)} rows); a domain column needs at least "
                                  "two domains (or leave `domain` out)")
        return build_regression(x, y, split=self.split, split_seed=self.split_seed, scaling=self.scaling,
                                domain=dom, split_per_seed=self.split_per_seed)


class Diabetes(Dataset):
    """scikit-learn's bundled diabetes regression set (442 patients x 10 features; offline, real data).

    Efron, Hastie, Johnstone & Tibshirani, "Least Angle Regression", Annals of Statistics 2004. Raw features
    (``load_diabetes(scaled=False)``: age, sex, BMI, blood pressure, six serum measurements) are min-max
    scaled per ``scaling``; the target is the raw disease progression one year later (25-346, (N, 1)).
    Seeded split ``split`` (default [0.6, 0.2, 0.2]: 266 / 88 / 88 rows).
    """

    task = "regression"
    paper = "Efron et al., Least Angle Regression, Ann. Statist. 2004 (scikit-learn diabetes data)"

    def __init__(self, split: list = (0.6, 0.2, 0.2), split_seed: int = 0, split_per_seed: bool = False,
                 scaling: str = "minmax_train"):
        _check_common(split, split_seed, scaling, split_per_seed)
        self.split, self.split_seed, self.scaling = list(split), split_seed, scaling
        self.split_per_seed = split_per_seed

    def shape(self):
        return (10,), 1

    def load(self) -> DataBundle:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True, scaled=False)
        return build_regression(x, y, split=self.split, split_seed=self.split_seed, scaling=self.scaling,
                                split_per_seed=self.split_per_seed)


class MultiModal1D(Dataset):
    """Synthetic 1-D regression whose labels form well-separated modes along x (a staircase), where mixup fails.

    Generator (numpy, seeded by ``seed``), ``n`` examples::

        x ~ Uniform(-1, 1)
        step(x) = min(floor(modes * (x + 1) / 2), modes - 1)          # which of ``modes`` equal intervals
        y = gap * step(x) + amplitude * sin(2 pi * frequency * x) + noise * N(0, 1)

    The labels are ``modes``-modal (clusters ``gap`` apart, each of width about 2 ``amplitude``), one mode per
    interval of x. Vanilla mixup pairs examples from different modes and trains on targets between the modes
    at inputs between the intervals, smoothing each jump into a ramp; C-Mixup with ``sigma`` below ``gap``
    pairs examples of the same mode, whose x interval is convex, so its mixed targets stay on the staircase.
    x is (N, 1) in [-1, 1] (``scaling: none`` by default), y is (N, 1). Seeded split ``split``.
    """

    task = "regression"

    def __init__(self, n: int = 1000, modes: int = 4, gap: float = 4.0, amplitude: float = 0.5,
                 frequency: float = 3.0, noise: float = 0.1, seed: int = 0, split: list = (0.6, 0.2, 0.2),
                 split_seed: int = 0, split_per_seed: bool = False, scaling: str = "none"):
        for name, v, lo, hi in (("n", n, 10, 10**8), ("modes", modes, 1, 10**6)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise PluginError(f"{name} must be an integer >= {lo}, got {v!r}")
            if v > hi:
                raise PluginError(f"{name} must be at most {hi}, got {v!r}")
        for name, v in (("gap", gap), ("amplitude", amplitude), ("frequency", frequency), ("noise", noise)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise PluginError(f"{name} must be a number >= 0, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PluginError(f"seed must be an integer, got {seed!r}")
        _check_common(split, split_seed, scaling, split_per_seed)
        self.split_per_seed = split_per_seed
        self.n, self.modes, self.gap, self.amplitude = n, modes, float(gap), float(amplitude)
        self.frequency, self.noise, self.seed = float(frequency), float(noise), seed
        self.split, self.split_seed, self.scaling = list(split), split_seed, scaling

    def shape(self):
        return (1,), 1

    def generate(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        x = rng.uniform(-1.0, 1.0, self.n)
        step = np.minimum(np.floor(self.modes * (x + 1) / 2), self.modes - 1)
        y = self.gap * step + self.amplitude * np.sin(2 * np.pi * self.frequency * x) + self.noise * rng.standard_normal(self.n)
        return x[:, None], y[:, None]

    def load(self) -> DataBundle:
        x, y = self.generate()
        return build_regression(x, y, split=self.split, split_seed=self.split_seed, scaling=self.scaling,
                                split_per_seed=self.split_per_seed)
