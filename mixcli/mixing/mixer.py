"""``Mixer``: a mixcli method in a user's own training loop, with the context and the random state the engine
would give it.

    mixer = Mixer("cutmix", model, num_classes=10, seed=0)
    for epoch in range(1, epochs + 1):
        mixer.start_epoch(epoch)
        for x, y in loader:
            out = mixer(x, y)              # a MixOutput: logits, y_a, y_b, lam
            loss = mixer.loss(out)         # the engine's loss (soft_ce / mse, or the method's own objective)
            opt.zero_grad(); loss.backward(); opt.step()

For the same seed, the same model, the same batches and the same optimizer, the steps are the engine's: the
method's host generator is ``np.random.default_rng(seed)`` (the engine's ``ctx.rng``), ``setup`` runs at the
first ``start_epoch`` (before any batch, as in the engine; without the training set, on the first batch), and
``ctx.step`` / ``ctx.epoch`` count as in the engine. ``state_dict`` / ``load_state_dict`` resume exactly
(generator, counters, the method's own state).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..api import (Batch, Context, DataBundle, Loss, Method, MixOutput, PluginError, Split, begin_step,
                   mixed_regression_target, soft_cross_entropy, soft_targets)
from .adapters import MODEL_NEEDS, adapt
from .factory import create
from .inputs import check_batch

__all__ = ["Mixer", "soft_rows"]


def soft_rows(out: MixOutput, num_classes: int) -> torch.Tensor:
    """The mixed soft target (B, K) of ``out``: ``lam t(y_a) + (1 - lam) t(y_b)``, ``t`` the label-smoothed
    one-hot of class ids, or the smoothed row itself for soft / one-hot label rows (B, K)."""
    if out.y_a.dim() == 1:
        return soft_targets(out, num_classes)
    s = out.smoothing
    a = out.y_a.float() * (1.0 - s) + s / num_classes
    b = out.y_b.float() * (1.0 - s) + s / num_classes
    lam = out.lam.view(-1, 1).float()
    return lam * a + (1.0 - lam) * b


def _split(value, what: str) -> Split | None:
    if value is None or isinstance(value, Split):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, torch.Tensor) for v in value):
        x, y = value
        if x.shape[0] != y.shape[0]:
            raise PluginError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels")
        return Split(x, y)
    raise PluginError(f"{what} must be a pair of tensors (x, y) or a mixcli.api.Split, got {type(value).__name__}")


class Mixer:
    """One method, its context and its random state, for a user's own training loop.

    ``method``: a registered method name (its options as keywords: ``Mixer("mixup", model, 10, alpha=0.4)``)
    or a method made by :func:`mixcli.mixing.create`. ``model``: the ``nn.Module`` being trained;
    feature-level and model-guided methods run it through :func:`mixcli.mixing.adapters.adapt` (timm,
    torchvision ResNet / ViT, ``nn.Sequential``, a mixcli model). ``num_classes``: for classification (None
    means regression, unless ``task`` says otherwise). ``seed``: the method's generator (the engine's
    ``np.random.default_rng(seed)``). Methods that need more say so when it is missing (one line):

    - ``train=(x, y)``: the training set (partners drawn from it: cmixup, ``partners: dataset``; its size:
      automix); rows are prepared by ``fetch(index) -> (x, y)`` (default: ``train`` at ``index`` on the
      model's device, uint8 images scaled to [0, 1] and normalized by ``mean`` / ``std`` when given);
    - ``val=(x, y)``: a validation split (selmix);
    - ``mean``, ``std``: per-channel normalization of the inputs, in [0, 1] pixel units (saliencymix and
      puzzlemix look at pixels): ``(0,)*C`` and ``(1,)*C`` for unnormalized [0, 1] images;
    - ``epochs``: the length of the run (automix's schedules).

    ``loss``: a loss plugin name (default ``soft_ce`` for classification, ``mse`` for regression) or a
    :class:`mixcli.api.Loss`. ``off_after_epoch``: plain training after that epoch (as in an experiment file).
    Labels: int class ids (N,) or, for methods that do not read the labels (the input-level ones), soft /
    one-hot rows (N, K); ``out.y_a`` / ``out.y_b`` are then rows too. Regression: float targets.
    """

    def __init__(self, method: str | Method, model: nn.Module, num_classes: int | None = None, *, seed: int = 0,
                 train=None, val=None, mean=None, std=None, epochs: int | None = None, task: str | None = None,
                 loss: str | Loss | None = None, device=None, fetch: Callable | None = None,
                 off_after_epoch: int | None = None, optimizer: torch.optim.Optimizer | None = None,
                 **options: Any) -> None:
        if isinstance(method, str):
            method = create(method, **options)
        elif options:
            raise PluginError(f"Mixer: options {sorted(options)} are for a method name; the method given is built "
                              "already (pass them to create instead)")
        if not isinstance(method, Method):
            raise PluginError("Mixer: method must be a method name or a mixcli.api.Method, got "
                              f"{type(method).__name__}")
        self.method = method
        self.name = name = getattr(method, "name", None) or type(method).__name__.lower()
        needs = method.requires()
        self.needs = needs
        task = task or ("classification" if num_classes is not None else "regression")
        if task not in ("classification", "regression"):
            raise PluginError(f"task must be classification or regression, got {task!r}")
        if task not in getattr(method, "tasks", (task,)):
            raise PluginError(f"method '{name}' supports task {', '.join(method.tasks)}, not {task}"
                              + (" (give num_classes for classification)" if num_classes is None else ""))
        if task == "classification" and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                         or num_classes < 1):
            raise PluginError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(model, nn.Module):
            raise PluginError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PluginError(f"seed must be an integer >= 0, got {seed!r}")
        if off_after_epoch is not None and (isinstance(off_after_epoch, bool) or not isinstance(off_after_epoch, int)
                                            or off_after_epoch < 0):
            raise PluginError(f"off_after_epoch must be an integer >= 0 or None, got {off_after_epoch!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise PluginError(f"epochs must be an integer >= 1, got {epochs!r}")
        self.task, self.num_classes, self.off_after = task, num_classes, off_after_epoch
        self.optimizer = optimizer  # the loop's optimizer: methods that train a part alike (automix's heads)
        self.user_model = model
        self.model = adapt(model, f"method '{name}'") if needs & MODEL_NEEDS else model
        self._device = torch.device(device) if device is not None else None
        train, val = _split(train, "train"), _split(val, "val")
        missing = []
        if "train" in needs and train is None:
            missing.append("train=(x, y), the training set")
        if "val" in needs and val is None:
            missing.append("val=(x, y), a validation split")
        if "normalization" in needs and (mean is None or std is None):
            missing.append("mean= and std=, the inputs' per-channel normalization in [0, 1] pixel units "
                           "((0,)*C and (1,)*C for unnormalized [0, 1] images)")
        if "epochs" in needs and epochs is None:
            missing.append("epochs=, the number of epochs of the run")
        if missing:
            raise PluginError(f"method '{name}' needs " + "; ".join(missing))
        for what, v in (("mean", mean), ("std", std)):
            if v is not None and (not isinstance(v, (tuple, list)) or not all(isinstance(f, (int, float)) for f in v)):
                raise PluginError(f"{what} must be a tuple of numbers (one per channel), got {v!r}")
        if std is not None and any(s <= 0 for s in std):
            raise PluginError(f"std must be > 0 per channel, got {std!r}")
        self.mean = tuple(float(v) for v in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        if isinstance(loss, Loss) or loss is None or isinstance(loss, str):
            self.loss_fn = self._loss_plugin(loss)
        else:
            raise PluginError(f"loss must be a loss plugin name or a mixcli.api.Loss, got {type(loss).__name__}")
        self._train, self._val, self._fetch = train, val, fetch
        self._epochs = epochs
        self.ctx: Context | None = None
        self._pending_epoch: int | None = None
        self._pending_state: dict | None = None
        self._rng = np.random.default_rng(int(seed))
        self._step, self._epoch = 0, 1
        self._checked_range = False

    @property
    def device(self) -> torch.device:
        """The device the method runs on: ``device=`` when given, else where the model's weights are now (a
        model moved after the Mixer was made, e.g. by Lightning, is followed)."""
        if self._device is not None:
            return self._device
        p = next(iter(self.user_model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------------------------------------------ context
    def _loss_plugin(self, loss):
        if isinstance(loss, Loss):
            return loss
        from ..errors import MixcliError
        from ..registry import REGISTRY

        name = loss or ("soft_ce" if self.task == "classification" else "mse")
        try:
            return REGISTRY.get("losses", name)()
        except MixcliError as exc:
            raise PluginError(str(exc)) from None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Stored training inputs -> what the model takes: on the device; uint8 images scaled to [0, 1] and
        normalized by ``mean`` / ``std`` (the engine's ``(x / 255 - mean) / std``); floats unchanged."""
        x = x.to(self.device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x
        c = x.shape[1]
        mean = torch.tensor(self.mean or (0.0,) * c, dtype=torch.float64)
        std = torch.tensor(self.std or (1.0,) * c, dtype=torch.float64)
        shape = (1, c) + (1,) * (x.dim() - 2)
        scale = (1.0 / (255.0 * std)).float().view(shape).to(self.device)
        shift = (-mean / std).float().view(shape).to(self.device)
        return torch.addcmul(shift, x, scale)

    def _default_fetch(self, index: torch.Tensor):
        t = self._train
        i = index.to(t.x.device)
        return self.prepare(t.x[i]), t.y[i].to(self.device, non_blocking=True)

    def _eval_batches(self, split: str, batch_size: int):
        s = {"train": self._train, "val": self._val, "test": self._val}.get(split)
        if s is None:
            raise PluginError(f"method '{self.name}' asked for the {split} split, which this Mixer was not given")
        for i in range(0, len(s), batch_size):
            yield self.prepare(s.x[i:i + batch_size]), s.y[i:i + batch_size].to(self.device)

    def _setup(self, train: Split) -> None:
        data = DataBundle(self.task, train, train, val=self._val, num_classes=self.num_classes, mean=self.mean,
                          std=self.std)
        fetch = self._fetch or (self._default_fetch if self._train is not None else self._no_fetch)
        self.ctx = Context(task=self.task, num_classes=self.num_classes, device=self.device, rng=self._rng,
                           train=train, fetch=fetch, epochs=self._epochs or 1, data=data, model=self.model,
                           eval_batches=self._eval_batches if self._val is not None else None)
        self.ctx.step, self.ctx.epoch = self._step, self._epoch
        if self.optimizer is not None:
            self.ctx.extra["optimizer"] = self.optimizer  # as the engine gives it
        try:
            self.method.setup(self.ctx)
        except PluginError as exc:
            raise PluginError(f"method '{self.name}': {exc}") from None
        if self._pending_state is not None:
            self.method.load_state_dict(self._pending_state)
            self._pending_state = None
        if self._pending_epoch is not None:
            epoch, self._pending_epoch = self._pending_epoch, None
            self.start_epoch(epoch)

    def _no_fetch(self, index):
        raise PluginError(f"method '{self.name}' fetched training examples; give the Mixer train=(x, y)")

    # ------------------------------------------------------------------------------------------ the loop
    def start_epoch(self, epoch: int) -> None:
        """Before each epoch (counting from 1), as the engine: the method's per-epoch schedule."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise PluginError(f"start_epoch: epoch must be an integer >= 1 (epochs count from 1), got {epoch!r}")
        self._epoch = epoch
        if self.ctx is None and self._train is not None:  # set up now, on the model's device (the engine's order)
            self._setup(self._train)
        if self.ctx is None:  # set up on the first batch; the epoch starts then
            self._pending_epoch = epoch
            return
        self.ctx.epoch, self.ctx.device = epoch, self.device
        if self._mixing():
            self.method.start_epoch(epoch, self.ctx)

    def _mixing(self) -> bool:
        return self.off_after is None or self._epoch <= self.off_after

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> MixOutput:
        """One training forward pass of the method on the batch ``(x, y)`` (on the model's device). ``index``:
        the rows' indices in ``train`` (methods that pick partners by row, e.g. cmixup, need it)."""
        ids_only = bool(self.needs & {"class_labels", "train"})
        check_batch(x, y, self.task, None, f"method '{self.name}'", class_ids=False)
        soft = self.task == "classification" and y.dim() == 2
        if soft and ids_only:
            raise PluginError(f"method '{self.name}' reads the class ids: give int class ids of shape (N,), not "
                              f"soft / one-hot labels of shape {tuple(y.shape)}")
        if soft and y.shape[1] != self.num_classes:
            raise PluginError(f"method '{self.name}': soft labels have {y.shape[1]} columns, expected num_classes = "
                              f"{self.num_classes}")
        if self.task == "classification" and not soft and not self._checked_range:
            lo, hi = int(y.min()), int(y.max())  # once: a host sync
            if lo < 0 or hi >= self.num_classes:
                raise PluginError(f"method '{self.name}': class ids must be in [0, {self.num_classes}), got "
                                  f"{lo}..{hi}")
            self._checked_range = True
        if not x.dtype.is_floating_point:
            raise PluginError(f"method '{self.name}' feeds x to the model, which takes floats; got {x.dtype} inputs "
                              "(uint8 images: x = mixer.prepare(x) scales and normalizes them, or use MixTransform)")
        if x.device != self.device or y.device != self.device:
            raise PluginError(f"method '{self.name}': the batch is on {x.device} / {y.device}, the model on "
                              f"{self.device}; move the batch to the model's device")
        try:
            self.method.check_input(tuple(x.shape[1:]))
        except PluginError as exc:
            raise PluginError(f"method '{self.name}': {exc}") from None
        if "index" in self.needs and index is None:
            raise PluginError(f"method '{self.name}' picks partners by the batch rows' indices in train: call "
                              "mixer(x, y, index=...)")
        if index is None:
            index = torch.arange(x.shape[0], device=x.device)
        if self.ctx is None:
            self._setup(self._train if self._train is not None else Split(x[:2].detach(), y[:2].detach()))
        self.ctx.device = self.device
        labels = torch.arange(x.shape[0], device=y.device) if soft else (
            y.long() if self.task == "classification" else y)
        begin_step(self.ctx, Batch(x, labels, index))  # the clean batch for losses that need it (sumix)
        if self._mixing():
            out = self.method(self.model, Batch(x, labels, index), self.ctx)
        else:
            out = MixOutput.unmixed(self.model(x), labels)
        if soft:
            if out.loss is not None:  # pragma: no cover - methods with their own loss read class ids
                raise PluginError(f"method '{self.name}' computes its own loss from class ids; give class ids")
            out.y_a, out.y_b = y[out.y_a], y[out.y_b]
        self._step += 1
        self.ctx.step = self._step
        return out

    def targets(self, out: MixOutput) -> torch.Tensor:
        """The mixed target of ``out``: soft rows (B, K) for classification, ``lam y_a + (1 - lam) y_b`` for
        regression (what a batch-transform pipeline would train on)."""
        if self.task == "classification":
            return soft_rows(out, self.num_classes)
        return mixed_regression_target(out)

    def loss(self, out: MixOutput) -> torch.Tensor:
        """The training loss of ``out``, as the engine computes it: the method's own objective when it sets
        one, else the loss plugin (soft-target cross-entropy for classification, MSE for regression)."""
        if out.loss is not None:
            return out.loss
        if self.task == "classification" and out.y_a.dim() == 2:
            return soft_cross_entropy(out.logits, soft_rows(out, self.num_classes))
        return self.loss_fn(out, self.ctx)

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The generator's state, the step and epoch counters and the method's own state: everything needed to
        resume exactly (save it next to the model's and the optimizer's)."""
        method = self.method.state_dict() if self.ctx is not None else (self._pending_state or {})
        return {"rng": self._rng.bit_generator.state, "step": self._step, "epoch": self._epoch, "method": method}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (then call :meth:`start_epoch` for the next epoch)."""
        if not isinstance(state, dict) or not {"rng", "step", "epoch", "method"} <= set(state):
            raise PluginError("load_state_dict: expected what Mixer.state_dict() returned (rng, step, epoch, method)")
        self._rng.bit_generator.state = state["rng"]
        self._step, self._epoch = int(state["step"]), int(state["epoch"])
        if self.ctx is not None:
            self.ctx.step, self.ctx.epoch = self._step, self._epoch
            if state["method"]:
                self.method.load_state_dict(state["method"])
        else:
            self._pending_state = state["method"] or None
