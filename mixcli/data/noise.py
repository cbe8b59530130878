"""Synthetic label noise on the training split of any classification dataset (issue 25).

Written in an experiment file as the dataset's ``label_noise`` option (a mapping; no noise without it)::

    dataset: {name: cifar10, label_noise: {kind: symmetric, rate: 0.4, seed: 0}}

Keys (defaults in brackets):

- ``kind`` (required): ``symmetric``, ``asymmetric`` or ``instance``.
- ``rate`` (required): a number in [0, 1]; what it means depends on ``kind`` (below).
- ``seed`` [0]: the seed of the noise draw, independent of the run's seed, so that every seed of an
  experiment trains on the *same* noisy labels (the usual protocol); it is part of the run id.
- ``over`` [all] (symmetric only): ``all`` or ``others``.
- ``pairs`` [auto] (asymmetric only): ``auto``, ``cifar10``, ``cifar100``, ``cifar100_blocks`` or ``next``.
- ``norm_std`` [0.1] (instance only): the spread of the per-example flip rates.

The kinds (``K`` classes, ``y`` the clean label, ``u ~ U[0, 1)`` one draw per example):

- ``symmetric``: each label is resampled with probability ``rate``. ``over: all`` (the default) draws the new
  label uniformly over all ``K`` classes, the true one included (Zhang et al. 2017's "random labels", the
  convention of Arazo et al. 2019's and DivideMix's code), so the realised noise rate is about
  ``rate * (K - 1) / K``; ``over: others`` draws it over the ``K - 1`` other classes (Co-teaching's
  convention), so the realised rate is about ``rate``.
- ``asymmetric``: a label of class ``c`` becomes ``T[c]`` with probability ``rate`` (classes without a pair
  keep their label). ``pairs: cifar10``: truck -> automobile, bird -> airplane, deer -> horse,
  cat <-> dog (Patrini et al., CVPR 2017); ``cifar100``: the next class (in id order, cyclically) within
  each of the 20 superclasses of CIFAR-100's official coarse labels; ``cifar100_blocks``: the next id within
  consecutive blocks of 5 ids, which is what Patrini et al.'s and ELR's code do (their blocks are not the
  superclasses); ``next``: ``c -> c + 1 mod K``. ``auto`` picks ``cifar10`` for the dataset ``cifar10``,
  ``cifar100`` for ``cifar100`` and ``next`` otherwise.
- ``instance``: part-dependent, instance-dependent noise, the generator of Xia et al., "Part-dependent
  Label Noise: Towards Instance-dependent Label Noise", NeurIPS 2020 (``tools.get_instance_noisy_label`` of
  xiaoboxia/Part-dependent-label-noise)::

      q_i ~ TruncNormal(mean=rate, std=norm_std, [0, 1]),   W ~ N(0, 1)^(K x F x K)
      a_i = x_i W[y_i]  (x_i: the flattened input, raw pixel values 0..255 for images), a_i[y_i] = -inf
      p_i = q_i softmax(a_i),  p_i[y_i] = 1 - q_i,   noisy y_i ~ Categorical(p_i)

  with the reference's draw order from ``numpy.random.RandomState(seed)`` (q, then W, then one uniform per
  example for the categorical draw), so the labels equal the reference's for the same seed and inputs (up to
  float32 rounding of the products, which the reference computes row by row). The realised rate is about
  ``rate``.

Only the training split is corrupted; validation and test labels stay clean. The clean training labels are
kept as ``Split.y_clean``, so the realised noise rate and the memorisation of noisy labels can be measured
(the ``label_noise`` evaluator).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..api import DataBundle, PluginError, Split

KINDS = ("symmetric", "asymmetric", "instance")
OVER = ("all", "others")
PAIRS = ("auto", "cifar10", "cifar100", "cifar100_blocks", "next")
DEFAULTS = {"seed": 0, "over": "all", "pairs": "auto", "norm_std": 0.1}
#: the keys each kind takes besides kind, rate and seed
KIND_KEYS = {"symmetric": ("over",), "asymmetric": ("pairs",), "instance": ("norm_std",)}

#: CIFAR-10 (airplane 0, automobile 1, bird 2, cat 3, deer 4, dog 5, frog 6, horse 7, ship 8, truck 9)
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
#: CIFAR-100's official coarse label (superclass) of each fine label 0..99 (the dataset's ``coarse_labels``)
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


# ------------------------------------------------------------------------------------------- the option
def check_label_noise(value: Any, dataset: str, task: str = "classification") -> dict:
    """The ``label_noise`` option of dataset ``dataset`` checked and completed with its defaults (the
    form that enters the run id), or a :class:`PluginError` saying what is expected, in one line."""
    if task != "classification":
        raise PluginError(f"label noise corrupts class labels; dataset '{dataset}' is a {task} dataset")
    if not isinstance(value, dict):
        raise PluginError("expected a mapping such as {kind: symmetric, rate: 0.4, seed: 0}, got "
                          f"{value!r}")
    kind = value.get("kind")
    if kind not in KINDS:
        raise PluginError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = ("kind", "rate", "seed") + KIND_KEYS[kind]
    for k in value:
        if k not in allowed:
            other = [kd for kd, keys in KIND_KEYS.items() if k in keys]
            why = f" (an option of kind {other[0]})" if other else ""
            raise PluginError(f"unknown key '{k}' for kind {kind}{why}; expected {', '.join(allowed)}")
    if "rate" not in value:
        raise PluginError(f"needs 'rate', the noise rate in [0, 1] (e.g. {{kind: {kind}, rate: 0.4}})")
    rate = value["rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise PluginError(f"rate must be a number in [0, 1], got {rate!r}")
    seed = value.get("seed", DEFAULTS["seed"])
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise PluginError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    out = {"kind": kind, "rate": float(rate), "seed": int(seed)}
    if kind == "symmetric":
        out["over"] = value.get("over", DEFAULTS["over"])
        if out["over"] not in OVER:
            raise PluginError(f"over must be all (the true class included) or others, got {out['over']!r}")
    elif kind == "asymmetric":
        out["pairs"] = value.get("pairs", DEFAULTS["pairs"])
        if out["pairs"] not in PAIRS:
            raise PluginError(f"pairs must be one of {', '.join(PAIRS)}, got {out['pairs']!r}")
        if out["pairs"] == "auto":
            out["pairs"] = {"cifar10": "cifar10", "cifar100": "cifar100"}.get(dataset, "next")
    else:
        std = value.get("norm_std", DEFAULTS["norm_std"])
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < float("inf"):
            raise PluginError(f"norm_std must be a number > 0, got {std!r}")
        out["norm_std"] = float(std)
    return out


def check_classes(spec: dict, num_classes: int) -> None:
    """A PluginError when the asymmetric pairs do not fit ``num_classes`` classes (or K < 2)."""
    if num_classes < 2:
        raise PluginError(f"label noise needs at least 2 classes, the dataset has {num_classes}")
    need = {"cifar10": 10, "cifar100": 100}.get(spec.get("pairs"))
    if need is not None and num_classes != need:
        raise PluginError(f"pairs: {spec['pairs']} is defined for {need} classes, the dataset has {num_classes}; "
                          "use pairs: next (c -> c + 1 mod K)")
    if spec.get("pairs") == "cifar100_blocks" and num_classes % 5:
        raise PluginError(f"pairs: cifar100_blocks needs a multiple of 5 classes, the dataset has {num_classes}")


# --------------------------------------------------------------------------------------------- the noise
def transition(pairs: str, num_classes: int) -> np.ndarray:
    """``T[c]``: the class a flipped label of class ``c`` becomes (``T[c] = c`` for classes without a pair)."""
    t = np.arange(num_classes)
    if pairs == "cifar10":
        for a, b in CIFAR10_PAIRS.items():
            t[a] = b
    elif pairs == "cifar100":
        coarse = np.asarray(CIFAR100_COARSE)
        for s in range(20):
            members = np.flatnonzero(coarse == s)
            t[members] = np.roll(members, -1)
    elif pairs == "cifar100_blocks":
        t = (t // 5) * 5 + (t % 5 + 1) % 5
    elif pairs == "next":
        t = (t + 1) % num_classes
    else:
        raise PluginError(f"unknown pairs {pairs!r}")
    return t


def symmetric(y: np.ndarray, num_classes: int, rate: float, seed: int, over: str = "all") -> np.ndarray:
    """Each label resampled with probability ``rate``: uniformly over all classes (``over='all'``) or over
    the other ``K - 1`` (``'others'``). Draws: ``u`` (N uniforms), then N integers, from
    ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    flip = rng.random(y.shape[0]) < rate
    if over == "all":
        new = rng.integers(0, num_classes, y.shape[0])
    else:
        new = (y + rng.integers(1, num_classes, y.shape[0])) % num_classes
    return np.where(flip, new, y).astype(np.int64)


def asymmetric(y: np.ndarray, num_classes: int, rate: float, seed: int, pairs: str) -> np.ndarray:
    """A label of class ``c`` becomes ``T[c]`` (:func:`transition`) with probability ``rate``."""
    rng = np.random.default_rng(seed)
    flip = rng.random(y.shape[0]) < rate
    return np.where(flip, transition(pairs, num_classes)[y], y).astype(np.int64)


def instance(x: torch.Tensor, y: np.ndarray, num_classes: int, rate: float, seed: int,
             norm_std: float = 0.1) -> np.ndarray:
    """Xia et al. (NeurIPS 2020)'s part-dependent instance noise (see the module docstring), vectorised:
    the products ``x_i W[y_i]`` are computed per class in float32, as the reference does per row."""
    from scipy import stats

    rs = np.random.RandomState(seed)
    n, k = y.shape[0], num_classes
    lo, hi = (0 - rate) / norm_std, (1 - rate) / norm_std
    q = stats.truncnorm(lo, hi, loc=rate, scale=norm_std).rvs(n, random_state=rs)
    feats = x.reshape(n, -1).float()
    w = torch.from_numpy(rs.randn(k, feats.shape[1], k)).float()
    a = torch.empty(n, k)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    for c in range(k):
        rows = torch.nonzero(yt == c).flatten()
        if rows.numel():
            a[rows] = feats[rows] @ w[c]
    a[torch.arange(n), yt] = -float("inf")
    qt = torch.from_numpy(q).float().view(-1, 1)
    p = qt * torch.softmax(a, dim=1)
    p[torch.arange(n), yt] += 1 - qt.view(-1)
    # numpy's RandomState.choice(K, p=p_i): one uniform per example, searched in the normalised cdf
    cdf = p.numpy().astype(np.float64).cumsum(axis=1)
    cdf /= cdf[:, -1:]
    u = rs.random_sample(n)
    return np.minimum((cdf <= u[:, None]).sum(axis=1), k - 1).astype(np.int64)


def noisy_labels(spec: dict, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The noisy version of the labels ``y`` (int64, on the CPU) of inputs ``x`` under ``spec`` (a
    :func:`check_label_noise` result)."""
    check_classes(spec, num_classes)
    yn = y.cpu().numpy().astype(np.int64)
    if spec["kind"] == "symmetric":
        out = symmetric(yn, num_classes, spec["rate"], spec["seed"], spec["over"])
    elif spec["kind"] == "asymmetric":
        out = asymmetric(yn, num_classes, spec["rate"], spec["seed"], spec["pairs"])
    else:
        out = instance(x.cpu(), yn, num_classes, spec["rate"], spec["seed"], spec["norm_std"])
    return torch.from_numpy(out)


def apply_label_noise(data: DataBundle, spec: dict | None) -> DataBundle:
    """``data`` with its training labels corrupted by ``spec`` (None: unchanged) and the clean ones kept in
    ``data.train.y_clean``; validation and test splits are untouched."""
    if spec is None:
        return data
    if data.task != "classification":
        raise PluginError(f"label noise corrupts class labels; this is a {data.task} dataset")
    t = data.train
    clean = t.y if t.y_clean is None else t.y_clean
    data.train = Split(t.x, noisy_labels(spec, t.x, clean, int(data.num_classes)).to(clean.device), t.domain,
                       y_clean=clean)
    return data


def noise_rate(split: Split) -> float:
    """The realised noise rate of a split: the fraction of labels that differ from the clean ones (0 when
    the split keeps no clean labels)."""
    if split.y_clean is None or not len(split):
        return 0.0
    return float((split.y != split.y_clean).float().mean())
