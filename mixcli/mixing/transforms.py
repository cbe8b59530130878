"""The batch-transform form of the input-level methods, as torchvision's ``v2.MixUp`` / ``v2.CutMix`` and
timm's ``Mixup``: ``x_mixed, y_soft = transform(x, y)``.

    cutmix = MixTransform("cutmix", num_classes=10, seed=0, alpha=1.0)
    x, y = cutmix(x, y)                      # y: int class ids (N,) or soft / one-hot rows (N, K)
    loader = DataLoader(ds, batch_size=128, collate_fn=cutmix)   # or as the DataLoader's collate_fn

The method runs exactly as in the engine (same draws from ``np.random.default_rng(seed)``); it is handed
a stand-in model that returns its input, so what it would feed the network is the mixed batch, and its
labels ``lam y_a + (1 - lam) y_b`` (label smoothing included) become the soft rows returned. Images keep
their shape, dtype (uint8 images are mixed in float and rounded back) and memory format (channels-last
stays channels-last); the soft labels are float32 (or the dtype of the soft labels given), rows summing to 1.
Partners come from a random permutation of the batch, so a row can be its own partner (then unmixed: one
label), where torchvision pairs row i with row i - 1 and timm with row B - 1 - i.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import Batch, Context, DataBundle, Method, MixOutput, PluginError, Split
from .factory import create
from .inputs import check_batch

__all__ = ["MixTransform", "INPUT_METHODS"]

#: the built-in methods the batch transform runs (any other method that mixes inputs only works too);
#: cmixup (regression) and ``partners: dataset`` draw partners from the training set: give ``train=``
INPUT_METHODS = ("mixup", "cutmix", "fmix", "resizemix", "saliencymix", "gridmix", "smoothmix", "cmixup", "erm")

#: what a method may need and still run as a batch transform (``train`` and ``index`` with ``train=``)
_OK_NEEDS = frozenset({"images", "normalization"})


def _input_position_only(method: Method) -> bool:
    """Whether a method that addresses model positions (``position`` / ``positions`` options) mixes at
    position 0 (the input) only, as cmixup does by default."""
    positions = getattr(method, "positions", None)
    if positions is None:
        positions = [getattr(method, "position", None)]
    return all(p == 0 for p in positions)


class _Inputs(nn.Module):
    """The stand-in model: returns what the method would feed the network (position 0 = the input)."""

    embed_position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_to(self, x: torch.Tensor, position: int) -> torch.Tensor:
        return x

    def forward_from(self, h: torch.Tensor, position: int) -> torch.Tensor:
        return h


class MixTransform:
    """``(x, y) -> (x_mixed, y_soft)`` for an input-level method (:data:`INPUT_METHODS`).

    ``method``: a method name with its options as keywords, or a method from :func:`mixcli.mixing.create`.
    ``num_classes``: the number of classes (soft rows have this many columns); None: regression (float targets,
    mixed as ``lam y_a + (1 - lam) y_b``). ``seed``: the method's generator. ``train=(x, y)``: the training set,
    for methods that draw partners from it (cmixup, ``partners: dataset``; call ``transform(x, y, index=...)``
    with the batch rows' indices in it for cmixup), in the batch's units (rows are taken as they are, uint8
    scaled like the batch; ``fetch(index) -> (x, y)`` to prepare them yourself). ``mean`` / ``std``: per-channel
    normalization of float images, in [0, 1] pixel units (used by saliencymix to see pixels; default: the images
    are in [0, 1]); uint8 images are pixels already. Call it with ``(x, y)``, with one ``(x, y)`` pair, or with
    a list of ``(image, label)`` samples (as a ``collate_fn``: they are stacked with
    ``torch.utils.data.default_collate`` first). ``last`` holds the last call's :class:`~mixcli.api.MixOutput`
    (partners and lambda).
    """

    def __init__(self, method: str | Method, num_classes: int | None = None, *, seed: int = 0, mean=None,
                 std=None, train=None, fetch=None, **options: Any) -> None:
        if isinstance(method, str):
            method = create(method, **options)
        elif options:
            raise PluginError(f"MixTransform: options {sorted(options)} are for a method name; the method given is "
                              "built already")
        if not isinstance(method, Method):
            raise PluginError(f"MixTransform: method must be a method name or a mixcli.api.Method, got "
                              f"{type(method).__name__}")
        self.method = method
        self.name = name = getattr(method, "name", None) or type(method).__name__.lower()
        from .mixer import _split

        needs = method.requires()
        self.needs = needs
        ok = _OK_NEEDS | ({"stages"} if _input_position_only(method) else set()) | {"train", "index"}
        extra = sorted(needs - ok)
        if getattr(method, "family", "input") != "input" or extra:
            family = getattr(method, "family", "input")
            what = f"is a {family}-level method" if family != "input" else f"needs {', '.join(extra)}"
            raise PluginError(f"method '{name}' {what}, so it cannot run as a batch transform (which sees the "
                              f"batch only); use mixcli.mixing.Mixer with the model instead. Batch transforms: "
                              f"{', '.join(INPUT_METHODS)}")
        self.task = "classification" if num_classes is not None else "regression"
        if self.task not in getattr(method, "tasks", (self.task,)):
            raise PluginError(f"method '{name}' supports task {', '.join(method.tasks)}, not {self.task}"
                              + (" (give num_classes for classification)" if num_classes is None else
                                 " (num_classes=None for regression)"))
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise PluginError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.train = _split(train, "train")
        if "train" in needs and self.train is None and fetch is None:
            raise PluginError(f"method '{name}' draws partners from the training set: give train=(x, y)")
        self._fetch = fetch
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PluginError(f"seed must be an integer >= 0, got {seed!r}")
        if (mean is None) != (std is None):
            raise PluginError("give both mean and std (per channel, [0, 1] pixel units), or neither")
        self.num_classes = num_classes
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        self.rng = np.random.default_rng(int(seed))
        self.ctx: Context | None = None
        self.last: MixOutput | None = None
        self._model = _Inputs()

    def __repr__(self) -> str:
        return f"MixTransform({self.name!r}, num_classes={self.num_classes})"

    def _context(self, x: torch.Tensor, y: torch.Tensor) -> Context:
        if self.ctx is None:
            probe = self.train or Split(x[:2].detach(), y[:2].detach())
            c = x.shape[1] if x.dim() == 4 else 1
            mean, std = self.mean or (0.0,) * c, self.std or (1.0,) * c
            data = DataBundle(self.task, probe, probe, num_classes=self.num_classes, mean=mean, std=std)
            fetch = self._fetch or (self._train_rows if self.train is not None else self._no_fetch)
            self.ctx = Context(task=self.task, num_classes=self.num_classes, device=x.device, rng=self.rng,
                               train=probe, fetch=fetch, epochs=1, data=data, model=self._model)
            try:
                self.method.setup(self.ctx)
            except PluginError as exc:
                self.ctx = None
                raise PluginError(f"method '{self.name}': {exc}") from None
            self.method.start_epoch(1, self.ctx)
        self.ctx.device = x.device
        return self.ctx

    def _train_rows(self, index: torch.Tensor):
        t, device = self.train, self.ctx.device
        x, y = t.x[index.to(t.x.device)].to(device), t.y[index.to(t.y.device)].to(device)
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x), y

    def _no_fetch(self, index):
        raise PluginError(f"method '{self.name}' draws partners from the training set; a batch transform sees the "
                          "batch only (use mixcli.mixing.Mixer with train=)")

    def __call__(self, x, y=None, index=None):
        if y is None:
            if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, torch.Tensor) for v in x):
                x, y = x  # one (x, y) pair
            elif isinstance(x, (list, tuple)) and x and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in x):
                from torch.utils.data import default_collate
                x, y = default_collate(list(x))
            else:
                raise PluginError(f"method '{self.name}': call the transform with (x, y), a pair (x, y), or a list of "
                                  "(image, label) samples")
        if isinstance(y, int) or (isinstance(y, torch.Tensor) and y.dim() == 0):
            raise PluginError(f"method '{self.name}': the batch transform mixes whole batches; got one label (for "
                              "one sample, stack samples into a batch first)")
        ids = self.task == "classification" and "train" in self.needs  # partners' labels are class ids
        check_batch(x, y, self.task, self.num_classes, f"method '{self.name}'", class_ids=ids)
        if "index" in self.needs and index is None:
            raise PluginError(f"method '{self.name}' picks partners by the batch rows' indices in train: call "
                              "transform(x, y, index=...)")
        try:
            self.method.check_input(tuple(x.shape[1:]))
        except PluginError as exc:
            raise PluginError(f"method '{self.name}': {exc}") from None
        dtype, n = x.dtype, x.shape[0]
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        xf = x.float() / 255.0 if dtype == torch.uint8 else x
        ctx = self._context(xf, y)
        rows = torch.arange(n, device=x.device)
        # labels: the row numbers (so soft labels mix by row), or, for partners from train, the labels themselves
        labels = rows if self.task == "classification" and not ids else (y.long() if ids else y)
        try:
            out = self.method(self._model, Batch(xf, labels, rows if index is None else index), ctx)
        except AttributeError as exc:
            raise PluginError(f"method '{self.name}' uses the model ({exc}); use mixcli.mixing.Mixer") from None
        if out.loss is not None:
            raise PluginError(f"method '{self.name}' defines its own loss, so it has no soft labels; use Mixer")
        ctx.step += 1
        self.last = out
        mixed = out.logits
        if mixed.shape != x.shape:
            raise PluginError(f"method '{self.name}' does not return a mixed batch of the input's shape; use Mixer")
        if dtype == torch.uint8:
            mixed = (mixed * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        else:
            mixed = mixed.to(dtype)
        if channels_last:
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        if self.task == "regression":
            lam = out.lam.view(-1, *([1] * (out.y_a.dim() - 1))).to(out.y_a.dtype)
            return mixed, lam * out.y_a + (1 - lam) * out.y_b
        if ids:
            rows = torch.nn.functional.one_hot(torch.cat([out.y_a, out.y_b]), self.num_classes).float()
            t = rows * (1.0 - out.smoothing) + out.smoothing / self.num_classes if out.smoothing else rows
            lam = out.lam.float().view(-1, 1)
            return mixed, lam * t[:n] + (1.0 - lam) * t[n:]
        return mixed, self._soft(out, y)

    def _soft(self, out: MixOutput, y: torch.Tensor) -> torch.Tensor:
        k, s = self.num_classes, out.smoothing
        if y.dim() == 1:
            rows = torch.nn.functional.one_hot(y.long(), k).float()
        else:
            rows = y if y.dtype.is_floating_point else y.float()
        t = rows * (1.0 - s) + s / k if s else rows
        lam = out.lam.to(t.device, t.dtype).view(-1, 1)
        return lam * t[out.y_a] + (1.0 - lam) * t[out.y_b]

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "step": 0 if self.ctx is None else self.ctx.step}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        if self.ctx is not None:
            self.ctx.step = int(state["step"])
