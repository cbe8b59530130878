"""The public plugin API of mixcli.

Everything the engine runs comes through this module's types; the built-in plugins in ``plugins/`` use
nothing else, exactly as a third-party package would. Six kinds of plugins exist, one entry-point group each:

=================  ======================  ==========================================================
group              base class              what it provides
=================  ======================  ==========================================================
mixcli.datasets    :class:`Dataset`        ``load() -> DataBundle`` (tensors for train / val / test)
mixcli.models      :class:`Model`          an ``nn.Module`` made of ``stages`` + ``pool`` + ``classifier``
mixcli.methods     :class:`Method`         one training forward pass: ``__call__(model, batch, ctx) -> MixOutput``
mixcli.losses      :class:`Loss`           ``__call__(out: MixOutput, ctx) -> scalar loss``
mixcli.evaluators  :class:`Evaluator`      ``__call__(model, ctx: EvalContext) -> {metric: float}``
mixcli.loggers     :class:`Logger`         ``start`` / ``epoch`` / ``steps`` / ``end``: results sent elsewhere
=================  ======================  ==========================================================

The plugin author's surface is this module and two helper packages, nothing else of mixcli:
:mod:`mixcli.mixing` (partners, boxes, the mixup / CutMix draw: what methods share) and :mod:`mixcli.data`
(long-tail and stratified subsets, tabular readers, the device data path: what datasets share).

A plugin's options are the keyword arguments of its ``__init__``; their defaults are what ``mixcli list``
shows and what the experiment file may override. The first line of the class docstring is its description.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import MetricInfo, adaptive_ece, aupr, auroc, confidences, ece, fit_temperature, fpr_at_tpr

__all__ = [
    "Plugin", "Split", "DataBundle", "Dataset", "Model", "Batch", "MixOutput", "Context", "Method", "Loss",
    "soft_targets", "sample_lam", "PluginError", "permutation", "begin_step", "lam_tensor", "interpolate",
    "soft_cross_entropy", "mixed_regression_target", "check_range", "file_fingerprint", "Evaluator",
    "EvalContext", "metric", "dataset_class", "method_class", "checkpoint_refusal", "MetricInfo", "Logger", "scalars", "write_artifact", "NEEDS",
    # metric functions evaluator plugins build on (defined in mixcli.metrics, one definition each)
    "ece", "adaptive_ece", "confidences", "fit_temperature", "auroc", "aupr", "fpr_at_tpr",
]


from .errors import PluginError  # noqa: E402,F401 - part of the plugin API (defined without torch)


class Plugin:
    """Common metadata of every plugin kind."""

    #: short citation of the paper the plugin implements, shown by ``mixcli list``
    paper: ClassVar[str] = ""

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""


# ----------------------------------------------------------------------------------------------- datasets
@dataclass
class Split:
    """One split of a dataset, as tensors.

    ``x``: images as ``uint8`` of shape (N, C, H, W), or float features of shape (N, F).
    ``y``: int64 class labels (N,) for classification, float targets (N, D) for regression.
    ``domain``: optional int64 domain / group id per example (N,).
    ``y_clean``: the clean labels (N,) when ``y`` was corrupted by the dataset's ``label_noise`` option
    (:mod:`mixcli.data.noise`; training split only), else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    domain: torch.Tensor | None = None
    y_clean: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        d = None if self.domain is None else self.domain.to(device)
        c = None if self.y_clean is None else self.y_clean.to(device)
        return Split(self.x.to(device), self.y.to(device), d, c)

    def subset(self, index) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        d = None if self.domain is None else self.domain[index]
        c = None if self.y_clean is None else self.y_clean[index]
        return Split(self.x[index], self.y[index], d, c)


@dataclass
class DataBundle:
    """What a dataset plugin returns.

    ``mean``/``std`` (per channel, in [0, 1] pixel units) are applied on the device to uint8 images after
    augmentation; leave them ``None`` for float features. ``augment`` turns on the standard training
    augmentation for images: random crop with ``pad`` pixels of ``pad_mode`` padding, and (if ``flip``) a
    horizontal flip.
    """

    task: str
    train: Split
    test: Split
    val: Split | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False
    pad: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    class_names: list[str] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def out_dim(self) -> int:
        if self.task == "classification":
            return int(self.num_classes)
        return 1 if self.train.y.dim() == 1 else int(self.train.y.shape[1])

    def splits(self) -> dict[str, Split]:
        out = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out


class Dataset(Plugin):
    """Base class of dataset plugins: options in ``__init__``, data from :meth:`load`.

    Three optional hooks serve validation and run identity (mixcli calls them at ``validate`` and
    ``run --dry-run`` time, so they must be cheap: no loading of the data):

    - :attr:`path_options`: the options that hold file or folder paths. A relative path written in an
      experiment file is resolved against the file's folder (on the command line: the working folder) before
      the plugin sees it.
    - :meth:`shape`: the input shape and output dimension the data will have, so that the model (and the
      method's fit to it, :meth:`Method.check_model`) is checked before any run.
    - :meth:`fingerprint`: a short text identifying the data's content (e.g. ``file_fingerprint(path)``). It
      becomes part of the run id: when the data changes, runs are not skipped as already finished.
    """

    task: ClassVar[str] = "classification"
    #: options holding file or folder paths (resolved like every path of an experiment file)
    path_options: ClassVar[tuple[str, ...]] = ()

    def load(self) -> DataBundle:  # pragma: no cover - abstract
        raise NotImplementedError

    def shape(self) -> tuple[tuple[int, ...], int] | None:
        """``(input_shape, out_dim)`` of the data without loading it (e.g. ``((3, 32, 32), 10)``), or None
        when only loading can tell (the model is then checked when the run starts)."""
        return None

    def fingerprint(self) -> str | None:
        """A text that changes when the data changes (None: the data is fixed by the options alone, e.g.
        bundled or generated data, or official files whose checksum is verified when loading)."""
        return None


# ------------------------------------------------------------------------------------------------- models
class Model(nn.Module, Plugin):
    """Base class of model plugins: ``logits = classifier(pool(stages[-1](...stages[0](x))))``.

    Subclasses take ``(in_shape, out_dim, **options)`` and set ``self.stages`` (an ``nn.ModuleList``),
    ``self.pool`` and ``self.classifier``. Feature-level methods address *positions*:

    - position ``0``: the input;
    - position ``k`` (1..S): the output of stage ``k`` (for CNNs, a feature map);
    - position ``S + 1`` (:attr:`embed_position`): the pooled embedding just before the classifier.
    """

    stages: nn.ModuleList
    pool: nn.Module
    classifier: nn.Module

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def embed_position(self) -> int:
        return len(self.stages) + 1

    def forward_to(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """Run the network from the input up to ``position``."""
        for stage in self.stages[: min(position, len(self.stages))]:
            x = stage(x)
        if position > len(self.stages):
            x = self.pool(x)
        return x

    def forward_from(self, h: torch.Tensor, position: int) -> torch.Tensor:
        """Run the network from the representation at ``position`` to the logits."""
        for stage in self.stages[position:]:
            h = stage(h)
        if position <= len(self.stages):
            h = self.pool(h)
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    @classmethod
    def check_options(cls, **options) -> None:
        """Check the options that need no data (``mixcli validate`` calls this; a model is only built at run
        time, when the input shape is known). Raise a PluginError for a bad value; the default checks nothing."""

    # Hooks for methods that need the model in a particular form. They name no architecture: a model
    # plugin provides them (or inherits the generic version below), a method calls them.
    def class_activation(self, x: torch.Tensor):
        """One forward pass for class activation maps (CAM; Zhou et al., CVPR 2016), e.g. for SnapMix.

        Returns ``(logits, fmap, weight, bias)``: the last stage's map ``fmap`` (B, C, H, W) at position
        :attr:`num_stages`, the logits computed from it, and the linear classifier's ``weight`` (K, C) and
        ``bias`` (K,) or None. ``CAM_k = sum_c weight[k, c] fmap[:, c]`` is exact when the model pools by
        global averaging (every built-in model and timm's default ``avg`` pool). Raises a PluginError when
        the map is not spatial or the classifier is not linear."""
        fmap = self.forward_to(x, self.num_stages)
        if fmap.dim() != 4:
            raise PluginError(f"{type(self).__name__}'s last stage gives a {tuple(fmap.shape[1:])} output, not a "
                              "spatial (C, H, W) map, so it has no class activation maps")
        if not isinstance(self.classifier, nn.Linear):
            raise PluginError(f"class activation maps need a linear classifier, {type(self).__name__} has a "
                              f"{type(self.classifier).__name__}")
        return self.forward_from(fmap, self.num_stages), fmap, self.classifier.weight, self.classifier.bias

    def class_attention(self, x: torch.Tensor):
        """One forward pass that also reads the class token's attention in the last transformer block
        (TransMix). Returns ``(logits, attn)``: ``attn`` (B, Hp, Wp) is the last block's softmax attention
        from the class token to each of the Hp x Wp patch tokens, averaged over heads and detached. Models
        without one (CNNs) raise a PluginError; the ``timm`` model provides it for ViTs."""
        raise PluginError(f"model {type(self).__name__} has no class-token attention (it needs a vision "
                          "transformer, e.g. model: {name: timm, arch: vit_tiny_patch16_224, img_size: 32, "
                          "patch_size: 4})")

    def patch_tokens(self, x: torch.Tensor):
        """One forward pass that also returns the patch tokens (TokenMix, SMMix). Returns ``(logits,
        tokens)``: ``tokens`` (B, Hp, Wp, D) are the last block's patch tokens after the final norm (the
        sequence the head reads its class token from, without the prefix tokens), not detached; the classifier
        applied to a token (or a mean of tokens) gives per-patch class scores. Models without patch tokens
        (CNNs) raise a PluginError; the ``timm`` model provides it for ViTs."""
        raise PluginError(f"model {type(self).__name__} has no patch tokens (it needs a vision transformer, "
                          "e.g. model: {name: timm, arch: vit_tiny_patch16_224, img_size: 32, patch_size: 4})")

    def patch_attention(self, x: torch.Tensor):
        """One forward pass that also reads how much attention each patch receives in the last block (SMMix).
        Returns ``(logits, attn)``: ``attn`` (B, Hp, Wp) is the last block's softmax attention from the patch
        tokens to each patch token, averaged over heads and over the query patches (the class token's row and
        column left out), detached. Models without one (CNNs) raise a PluginError; the ``timm`` model
        provides it for ViTs."""
        raise PluginError(f"model {type(self).__name__} has no patch attention (it needs a vision transformer, "
                          "e.g. model: {name: timm, arch: vit_tiny_patch16_224, img_size: 32, patch_size: 4})")


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class Batch:
    """A training batch on the device: normalized (and augmented) inputs, labels, and their row indices
    in the training split (so a method can pick partners outside the batch with :meth:`Context.fetch`)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


@dataclass
class MixOutput:
    """What a method's forward pass produces.

    The training target of row ``b`` is ``lam[b] * t(y_a[b]) + (1 - lam[b]) * t(y_b[b])`` where ``t`` is the
    (label-smoothed) one-hot encoding for classification and the identity for regression. ``lam`` is the
    weight of ``y_a``, shape (B,). A method that defines its own objective (e.g. RegMixup) sets ``loss``,
    and the loss plugin then returns it unchanged. ``info`` carries optional per-step scalars (tensors).
    """

    logits: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor
    smoothing: float = 0.0
    loss: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def unmixed(cls, logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> "MixOutput":
        lam = torch.ones(y.shape[0], device=logits.device)
        return cls(logits, y, y, lam, smoothing)


@dataclass
class Context:
    """What the engine tells a method (and a loss) about the run in progress.

    ``rng`` is the method's seeded host-side random generator (numpy): draw lambdas, permutations and boxes
    from it so that runs are reproducible and the device is never synchronized. ``fetch(index)`` returns the
    training examples at ``index`` prepared exactly like a batch (augmented, normalized, on the device).
    ``eval_batches(split, batch_size)`` iterates over a split ("train", "val", "test") as prepared evaluation
    batches ``(x, y)`` on the device (normalized, not augmented). ``artifacts_dir`` is the run's directory
    (``OUT/jobs/<run_id>``): a method may write files there for the user to inspect (e.g. selmix's gains).
    """

    task: str
    num_classes: int | None
    device: torch.device
    rng: np.random.Generator
    train: Split
    fetch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    epochs: int
    epoch: int = 1
    step: int = 0
    data: DataBundle | None = None
    model: Model | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    eval_batches: Callable[[str, int], Any] | None = None
    artifacts_dir: Path | None = None


#: the values of :attr:`Method.needs`
NEEDS = ("images", "train", "index", "val", "normalization", "epochs", "class_labels", "stages",
         "class_activation", "class_attention", "patch_tokens", "patch_attention")


class Method(Plugin):
    """Base class of mixing methods.

    ``family`` is ``input`` (mixes images), ``feature`` (mixes hidden representations) or ``loss`` (changes
    the objective). Override :meth:`__call__`; :meth:`setup` runs once before training and
    :meth:`start_epoch` before each epoch (epochs count from 1).
    """

    family: ClassVar[str] = "input"
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    #: What the method needs besides a batch and a model that runs it, from this vocabulary (:data:`NEEDS`):
    #: ``images`` (inputs (N, C, H, W)), ``train`` (the training split: partners drawn from it, or its size),
    #: ``index`` (each batch row's index in the training split), ``val`` (a validation split), ``normalization``
    #: (the inputs' per-channel mean/std), ``epochs`` (the length of the run), ``class_labels`` (int64 class
    #: ids, not soft labels: the method reads them), ``stages`` (the model's ``forward_to`` / ``forward_from``
    #: positions), ``class_activation``, ``class_attention``, ``patch_tokens`` and ``patch_attention`` (those
    #: model hooks). The engine always provides the data; ``mixcli.mixing.Mixer`` (a user's own loop) and
    #: ``mixcli validate`` read it through :meth:`requires` and :meth:`check_input`.
    needs: ClassVar[tuple[str, ...]] = ()
    #: the smallest image side (height and width) the method can mix
    min_side: ClassVar[int] = 1

    def requires(self) -> frozenset[str]:
        """:attr:`needs` for these options (a method whose needs depend on an option overrides this)."""
        return frozenset(type(self).needs)

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Raise :class:`PluginError` when inputs of ``input_shape`` (one example, e.g. ``(3, 32, 32)``)
        cannot be mixed: not images for a method that needs them, an image side below :attr:`min_side`.
        Cheap (no tensors): ``mixcli validate`` calls it with the dataset's shape, ``Mixer`` on each batch."""
        name = getattr(self, "name", None) or type(self).__name__
        input_shape = tuple(int(v) for v in input_shape)
        if "images" in self.requires():
            if len(input_shape) != 3:
                raise PluginError(f"{name} needs image inputs (N, C, H, W); got inputs of shape "
                                  f"(N, {', '.join(map(str, input_shape))})")
            if min(input_shape[1:]) < self.min_side:
                raise PluginError(f"{name} needs images of at least {self.min_side}x{self.min_side} pixels, got "
                                  f"{input_shape[1]}x{input_shape[2]}")

    def setup(self, ctx: Context) -> None:
        pass

    def start_epoch(self, epoch: int, ctx: Context) -> None:
        pass

    def state_dict(self) -> dict:
        """What the method must keep to resume exactly (learned parts, their optimizers, counters). Saved in
        every checkpoint and handed to :meth:`load_state_dict` after :meth:`setup` when a run resumes. A
        method whose only state is ``ctx.rng`` (which the engine keeps) returns nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (nothing to do for a method that keeps nothing)."""

    def check_model(self, model: Model, input_shape: tuple[int, ...]) -> None:
        """Raise :class:`PluginError` when the options do not fit ``model`` (e.g. a stage it does not have),
        whose inputs have ``input_shape`` (one example). Called by ``mixcli validate`` and ``run --dry-run``
        with the model built on PyTorch's meta device (structure only: no weights in memory; a forward pass
        of meta tensors computes shapes only)."""

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def inspect(cls, run_dir: Path, png: Path | None = None, step: int | None = None, top: int = 10) -> Any:
        """What a run of this method recorded in its run directory (``OUT/jobs/<run_id>``, see
        ``Context.artifacts_dir``), as a rich renderable; with ``png``, also a figure. ``step`` picks a recorded
        step (default: the last) and ``top`` how many rows to list. Shown by ``mixcli inspect``."""
        raise PluginError(f"this method ({cls.__name__}) records nothing to inspect")


class Loss(Plugin):
    """Base class of training losses: map a :class:`MixOutput` to a scalar."""

    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def __call__(self, out: MixOutput, ctx: Context) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Logger(Plugin):
    """Base class of loggers (entry-point group ``mixcli.loggers``): send a run's results somewhere else.

    Chosen by ``log:`` in the experiment file or ``mixcli run --log NAME[=URI]`` (live, while runs train)
    and by ``mixcli export OUT --to NAME`` (for results that already exist); both call the same methods.
    ``out`` is the experiment's output directory (the default place for local stores) and ``uri`` the
    user's destination (a tracking URI, a directory), None for the default. A missing optional dependency
    raises :class:`PluginError` naming the extra to install. ``run`` is a runs row (see
    ``mixcli.results.store.RUN_COLUMNS``; ``config`` is JSON) and ``tags`` the run's descriptive tags (experiment,
    method, seed, run id, the grid values, ``mixcli.name``: the run's name among its sweep's runs such as
    ``mixup alpha=0.4 s1``, and ``mixcli.group``: that name without the seed)."""

    def __init__(self, out: Path, uri: str | None = None) -> None:
        self.out, self.uri = Path(out), uri

    def prepare(self, experiments: list[str]) -> None:
        """Called once by the sweep's driver (and by ``export``) before any run, with the experiment names
        the runs belong to: create the destination (a store, its schema, its experiments) so that many
        workers never race to, and check within seconds that it answers. Raising turns the logger off for
        the sweep, with one warning line."""

    def start(self, run: dict, tags: dict[str, str]) -> None:
        """A training session of ``run`` begins (again, when it resumes). Export: once per run."""

    def epoch(self, run_id: str, row: dict) -> None:
        """One epoch of ``run_id``: its ``epochs`` row (``epoch``, ``train_loss``, ``lr``, metrics)."""

    def steps(self, run_id: str, rows: list[dict]) -> None:
        """Per-step rows of ``run_id`` (``step``, ``epoch``, ``loss``, ``lr``; only with ``train.log_steps``),
        once per epoch."""

    def end(self, run: dict, files: list[Path]) -> None:
        """``run`` ended (``run["status"]``), with its final runs row; ``files``: artifacts (config, PNGs)."""

    def exists(self, run: dict) -> bool:
        """Whether the destination already holds the run ``run`` (``export`` skips it)."""
        return False

    def close(self) -> None:
        """Flush and release the destination."""


# --------------------------------------------------------------------------------------------- evaluators
@dataclass
class EvalContext:
    """What the engine gives an evaluator (see :class:`Evaluator`).

    ``splits``: the stored splits on the device (``uint8`` images or float features, not normalized).
    ``pixels(x)`` turns stored inputs into floats in *pixel units*: images in [0, 1] (``uint8 / 255``),
    features unchanged; ``to_input(p)`` maps pixel units to what the model takes (the dataset's mean/std
    normalization; the identity for features). Perturbations (attacks, corruptions) are applied between
    the two, so an epsilon of 8/255 means 8 grey levels whatever the normalization.
    ``generator`` is a private random generator on the device, seeded from the run's seed, the epoch and the
    evaluator's name: an evaluator draws from it (never from the global or the training generators), so its
    results are reproducible and training is not perturbed. ``autocast()`` is the run's autocast context
    (bf16 on CUDA by default). ``artifacts_dir`` is the run's directory (``OUT/jobs/<run_id>``). Another
    registered dataset is loaded with :func:`dataset_class` (e.g. for OOD detection).
    """

    task: str
    num_classes: int | None
    device: torch.device
    data: DataBundle
    splits: dict[str, Split]
    images: bool
    batch_size: int
    epoch: int
    epochs: int
    seed: int
    name: str
    generator: torch.Generator
    autocast: Callable[[], Any]
    to_input: Callable[[torch.Tensor], torch.Tensor]
    artifacts_dir: Path | None = None

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Stored inputs -> float32 pixel units ([0, 1] for uint8 images; features unchanged)."""
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def batches(self, split: str = "test"):
        """``(pixels, labels)`` batches of a split, on the device."""
        s = self.splits[split]
        for i in range(0, len(s), self.batch_size):
            yield self.pixels(s.x[i:i + self.batch_size]), s.y[i:i + self.batch_size]

    @torch.no_grad()
    def logits(self, model: nn.Module, p: torch.Tensor) -> torch.Tensor:
        """float32 logits of pixel-unit inputs ``p`` (one batch; no gradient, the run's autocast)."""
        with self.autocast():
            return model(self.to_input(p)).float()

    def predict(self, model: nn.Module, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of a whole split (concatenated on the device)."""
        outs, ys = [], []
        for p, y in self.batches(split):
            outs.append(self.logits(model, p))
            ys.append(y)
        return torch.cat(outs), torch.cat(ys)


class Evaluator(Plugin):
    """Base class of evaluations beyond the clean metrics (robustness, OOD detection, calibration, ...).

    ``__call__(model, ctx)`` gets the trained model **in eval mode** and an :class:`EvalContext`, and returns
    ``{metric name: float}`` for the metrics the class declares in ``metrics`` (a tuple of
    :class:`MetricInfo`, made with :func:`metric`: name, direction, display scale, definition). The names are
    global: they become the columns ``test_<name>`` of the epochs table and ``{final,best}_test_<name>`` of
    the runs table, and ``mixcli compare --metric <name>`` / ``mixcli curves --metric <name>`` show them.
    An evaluator must not change the model (weights, buffers, ``.grad``) and must draw random numbers only
    from ``ctx.generator``; the engine restores the train/eval mode and every global RNG afterwards anyway.
    Work batched on the device; a declared metric that does not apply may be returned as NaN.
    """

    metrics: ClassVar[tuple[MetricInfo, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    #: the evaluator reads the clean training labels (``Split.y_clean``), so it needs the dataset option
    #: ``label_noise``; ``mixcli validate`` refuses it without one
    needs_clean_labels: ClassVar[bool] = False

    def check(self, data: DataBundle) -> None:
        """Raise a PluginError if this evaluator cannot run on ``data``; called when a run starts, before
        training (so a missing validation split does not surface only after the last epoch)."""

    def check_config(self, config: dict, dataset: "Dataset | None") -> None:
        """Raise a PluginError if this evaluator cannot run with the experiment's resolved ``config``
        (``dataset``, ``method``, ...) and its dataset plugin ``dataset`` (not loaded; None when it could not
        be built): called by ``mixcli validate`` and ``mixcli run`` alike, before any data is loaded, so that
        validate refuses what run would (e.g. a validation split of size 0, inputs of another kind)."""

    def __call__(self, model: Model, ctx: EvalContext) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


def metric(name: str, higher_is_better: bool, percent: bool = False, doc: str = "",
           task: str = "classification") -> MetricInfo:
    """Declare an evaluator metric, e.g. ``metric("fgsm_accuracy", True, percent=True, doc="...")``."""
    return MetricInfo(name, higher_is_better, percent, task, doc)


def dataset_class(name: str) -> type:
    """The registered dataset plugin class called ``name`` (a PluginError naming the installed ones if none)."""
    from .errors import MixcliError
    from .registry import REGISTRY

    try:
        return REGISTRY.get("datasets", name)
    except MixcliError as exc:
        raise PluginError(str(exc)) from None


def method_class(name: str) -> type:
    """The registered method plugin class called ``name`` (a PluginError naming the installed ones if none),
    e.g. for an evaluator that checks what the run's method provides."""
    from .errors import MixcliError
    from .registry import REGISTRY

    try:
        return REGISTRY.get("methods", name)
    except MixcliError as exc:
        raise PluginError(str(exc)) from None


def checkpoint_refusal(path, exc: Exception, fix: str) -> str:
    """One line for a checkpoint ``torch.load(weights_only=True)`` refused with ``exc``: a pickle holding Python
    objects (which could run code, so it is never unpickled; the blocked global is named) or a file that is no
    checkpoint at all. ``fix`` says how to make a loadable one."""
    import pickle
    import re

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"{path} is not a weights-only checkpoint: it holds pickled Python objects{what}, which are never "
                f"loaded (they could run code); {fix}")
    first = (text.strip().splitlines() or [""])[0][:160]
    return f"{path} is not a readable checkpoint ({type(exc).__name__}: {first})"


# ------------------------------------------------------------------------------------------------ helpers
def write_artifact(artifacts_dir: Path, name: str, data) -> Path:
    """Write ``name`` into a run's directory (``ctx.artifacts_dir``, which is ``OUT/jobs/<run_id>``)
    atomically and without following a link below ``OUT`` (:mod:`mixcli.fs`): the one way plugins write
    files. ``name`` is a path relative to that directory (e.g. ``"selmix/gains_0000100.npz"``); ``data`` is
    bytes, text, or a function that writes to a binary file. Returns the path written."""
    from . import fs

    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PluginError(f"artifact name {name!r}: expected a relative path inside the run directory")
    run_dir = Path(artifacts_dir)
    path = run_dir / rel
    if callable(data):
        write = data
    else:
        blob = data.encode() if isinstance(data, str) else bytes(data)
        def write(f):  # noqa: E306
            f.write(blob)
    fs.atomic_write(path, write, root=run_dir.parent.parent)
    return path


def file_fingerprint(*paths, hash_below: int = 16 * 2**20) -> str | None:
    """A fingerprint of files for :meth:`Dataset.fingerprint`: the SHA-256 of the contents when they total
    less than ``hash_below`` bytes, else each file's size and modification time (so a rewritten large file
    is noticed without reading it). A folder counts as all files below it. None when nothing exists yet
    (e.g. before a download)."""
    import hashlib
    import os

    files = []
    for p in map(str, paths):
        if os.path.isdir(p):
            for d, subdirs, names in os.walk(p):
                subdirs.sort()
                files += [(os.path.join(d, n), os.path.relpath(os.path.join(d, n), p)) for n in sorted(names)]
        elif os.path.isfile(p):
            files.append((p, os.path.basename(p)))
    if not files:
        return None
    stats = [(f, name, os.stat(f)) for f, name in files]
    if sum(st.st_size for _, _, st in stats) < hash_below:
        h = hashlib.sha256()
        for f, name, _ in stats:
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        return "sha256:" + h.hexdigest()[:16]
    h = hashlib.sha256("".join(f"{name}|{st.st_size}|{st.st_mtime_ns};" for _, name, st in stats).encode())
    return "stat:" + h.hexdigest()[:16]


def check_range(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False):
    """Return ``value`` if it is a number within the bounds, else raise a PluginError naming the option:
    e.g. ``check_range("prob", p, 0, 1)`` -> "prob must be in [0, 1], got 1.5"."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            want = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            want = f"{'>' if low_open else '>='} {low}"
        else:
            want = f"{'<' if high_open else '<='} {high}"
        raise PluginError(f"{name} must be {want}, got {value}")
    return value


def soft_targets(out: MixOutput, num_classes: int) -> torch.Tensor:
    """The mixed soft target ``lam * onehot_s(y_a) + (1 - lam) * onehot_s(y_b)`` with label smoothing ``s``
    (``onehot_s = (1 - s) * onehot + s / K``, the timm convention)."""
    off = out.smoothing / num_classes
    on = 1.0 - out.smoothing + off
    a = torch.full((out.y_a.shape[0], num_classes), off, device=out.logits.device, dtype=torch.float32)
    b = a.clone()
    a.scatter_(1, out.y_a.view(-1, 1), on)
    b.scatter_(1, out.y_b.view(-1, 1), on)
    lam = out.lam.view(-1, 1).float()
    return lam * a + (1.0 - lam) * b


def sample_lam(rng: np.random.Generator, alpha: float, size: int | None = None) -> float | np.ndarray:
    """Draw lambda ~ Beta(alpha, alpha); alpha <= 0 means no mixing (lambda = 1)."""
    if alpha <= 0:
        return 1.0 if size is None else np.ones(size)
    return float(rng.beta(alpha, alpha)) if size is None else rng.beta(alpha, alpha, size)


def mixed_regression_target(out: MixOutput) -> torch.Tensor:
    lam = out.lam.view(-1, *([1] * (out.y_a.dim() - 1))).to(out.y_a.dtype)
    return lam * out.y_a + (1 - lam) * out.y_b


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k target_k log softmax(logits)_k`` (computed in float32)."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()



def to_device(a, device, dtype=None) -> torch.Tensor:
    """A host array (numpy, or a list) as a tensor on ``device``, without making the host wait: on CUDA it
    is staged in pinned memory and copied ``non_blocking`` (torch's pinned-memory cache keeps the staging
    block until the copy has run); on the CPU no copy is made. The draws of methods stay on the host
    generator (``ctx.rng``) so that runs are reproducible; this is how they reach the device."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t if device.type == "cpu" else t.to(device)


def permutation(ctx: Context, n: int) -> torch.Tensor:
    """A random permutation of ``n`` rows drawn from the method's seeded host generator, on the device. It is
    also recorded as this step's partners (``ctx.extra["partners"]``, see :func:`begin_step`)."""
    perm = to_device(ctx.rng.permutation(n), ctx.device)
    ctx.extra["partners"] = perm
    return perm


def begin_step(ctx: Context, batch: "Batch") -> None:
    """What the training loops (the engine's step, ``Mixer``) record before a method's forward, for losses
    that need more than the :class:`MixOutput` (``sumix``): ``ctx.extra["batch"]``, the clean batch, and
    ``ctx.extra["partners"]`` cleared; :func:`permutation` and the mixup switch (``mixcli.mixing.switch``)
    set the latter to the partner of each row (a method drawing partners otherwise leaves it unset)."""
    ctx.extra["batch"] = batch
    ctx.extra.pop("partners", None)


def lam_tensor(lam, n: int, device) -> torch.Tensor:
    """Lambda (a float or an array of ``n``) as a float32 tensor of shape (n,) on ``device``."""
    if isinstance(lam, (float, int)):
        return torch.full((n,), float(lam), device=device)
    return to_device(lam, device, np.float32)


def interpolate(h: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * h + (1 - lam) * h[perm]`` with one lambda per row (``lam`` of shape (B,)).

    Integer inputs (e.g. uint8 images) are mixed in float32 and rounded back to their dtype (a cast of lam
    to uint8 would make it 0 or 1)."""
    if not (h.dtype.is_floating_point or h.dtype.is_complex):
        lam = lam.view(-1, *([1] * (h.dim() - 1))).float()
        out = lam * h.float() + (1 - lam) * h[perm].float()
        if h.dtype == torch.bool:
            return out.round().to(torch.bool)
        info = torch.iinfo(h.dtype)
        return out.round().clamp(info.min, info.max).to(h.dtype)
    lam = lam.view(-1, *([1] * (h.dim() - 1))).to(h.dtype)
    return lam * h + (1 - lam) * h[perm]


def scalars(row: dict, skip: tuple = ("epoch", "run_id")) -> dict[str, float]:
    """The finite numbers of a row (metrics, loss, lr), without ``skip`` and list-valued metrics."""
    import math

    out = {}
    for k, v in row.items():
        if k in skip or isinstance(v, (bool, str)) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out
