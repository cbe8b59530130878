"""Out-of-distribution detection with maximum softmax probability and energy scores."""
from __future__ import annotations

import torch

from mixcli.api import EvalContext, Evaluator, PluginError, check_range, dataset_class, metric
from mixcli.api import aupr, auroc, fpr_at_tpr

#: Outlier Exposure's synthetic sets (``CIFAR/test.py``), drawn in the network's input space
INPUT_NOISE = ("gaussian_noise", "uniform_noise")
#: mixcli's earlier synthetic sets, drawn as pixels in [0, 1] and normalized like the test images
PIXEL_NOISE = ("pixel_gaussian_noise", "pixel_uniform_noise")
SYNTHETIC = INPUT_NOISE + PIXEL_NOISE
OE_FRACTION = 5  # Outlier Exposure: ood_num_examples = len(test_data) // 5
SCORES = ("msp", "energy")
MAX_TEMPERATURE = 1e4  # the energy score's T: beyond this T logsumexp(z / T) is T log K, the same for every input
MAX_IMAGES = 10_000_000


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability ``max_k softmax(z)_k`` (Hendrycks & Gimpel 2017)."""
    return torch.softmax(logits.float(), 1).max(1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T logsumexp(z / T)`` (Liu et al. 2020): higher means more in-distribution."""
    return temperature * torch.logsumexp(logits.float() / temperature, 1)


def _shape(dataset) -> tuple | None:
    """A dataset plugin's input shape as it declares it without loading (None: unknown)."""
    try:
        found = dataset.shape()
    except Exception:  # noqa: BLE001 - e.g. a folder not there yet: known when the run loads it
        return None
    return tuple(int(v) for v in found[0]) if found else None


class OOD(Evaluator):
    """Detection of another dataset's test images as out-of-distribution (AUROC, AUPR, FPR at 95% TPR).

    Scores of the model on the in-distribution (ID) test split and on the OOD set, both preprocessed with the
    ID dataset's normalization: maximum softmax probability ``max_k softmax(z)_k`` (Hendrycks & Gimpel,
    "A Baseline for Detecting Misclassified and Out-of-Distribution Examples", ICLR 2017) and the negative
    energy ``T logsumexp(z / T)`` (Liu, Wang, Owens, Li, "Energy-based Out-of-distribution Detection",
    NeurIPS 2020). ID is the positive class: ``ood_<score>_auroc``, ``ood_<score>_aupr`` (AUPR-In) and
    ``ood_<score>_fpr95`` (the fraction of OOD images accepted at the threshold that keeps 95% of ID images),
    defined in :mod:`mixcli.metrics`; ``ood_<score>_aupr_out`` is the AUPR with OOD as the positive class
    (the negated score), the other convention of the literature. RegMixup (Pinto et al., NeurIPS 2022) reports these for mixup.

    ``dataset``: a registered dataset (its options in ``dataset_options``; its test split, same image shape
    as the ID data, e.g. ``svhn`` against ``cifar10``, ``fashion_mnist`` against ``mnist``), or synthetic
    noise drawn from the evaluator's private generator:

    - ``gaussian_noise``: Outlier Exposure's "Gaussian noise (sigma = 0.5)" (Hendrycks, Mazeika, Dietterich,
      "Deep Anomaly Detection with Outlier Exposure", ICLR 2019; ``hendrycks/outlier-exposure``
      ``CIFAR/test.py``): ``x = clip(N(0, 0.5^2), -1, 1)`` per input entry, fed to the network *as its
      input*, without the dataset's normalization (about 4.6% of entries saturate at +-1);
    - ``uniform_noise``: Outlier Exposure's "Uniform[-1, 1] noise": ``x ~ U[-1, 1]`` per entry, also the
      network's input as is;
    - ``pixel_gaussian_noise`` (``clip(N(0.5, 1), 0, 1)`` pixels, 62% saturated) and ``pixel_uniform_noise``
      (pixels U[0, 1]): mixcli's earlier sets (before round 3 these were called ``gaussian_noise`` and
      ``uniform_noise``), drawn as images in [0, 1] and normalized like the test images. Their AUROC is not
      comparable to Outlier Exposure's numbers.

    Outlier Exposure's sets hold ``len(test) // 5`` inputs (its ``ood_num_examples``; this sets the AUPR's
    base rate), the pixel sets as many as the ID test split. ``max_images`` caps any OOD set (its first
    images). The reference draws one set (``num_to_avg = 1``); mixcli draws a new one per evaluation. A
    ``root`` in ``dataset_options`` is taken as written (relative: to the working folder), since it is not an
    option of this evaluator.
    """

    paper = "Hendrycks & Gimpel, ICLR 2017 (MSP); Liu et al., NeurIPS 2020 (energy)"
    metrics = tuple(m for s in SCORES for m in (
        metric(f"ood_{s}_auroc", True, percent=True, doc=f"AUROC of the {s} score, ID positive"),
        metric(f"ood_{s}_aupr", True, percent=True, doc=f"average precision (AUPR-In) of the {s} score"),
        metric(f"ood_{s}_aupr_out", True, percent=True, doc=f"AUPR-Out: OOD positive, score -{s}"),
        metric(f"ood_{s}_fpr95", False, percent=True, doc=f"OOD accepted at 95% ID recall, {s} score")))

    def __init__(self, dataset: str = "uniform_noise", dataset_options: dict = {}, temperature: float = 1.0,
                 max_images: int = None):
        if not isinstance(dataset, str) or not isinstance(dataset_options, dict):
            raise PluginError(f"dataset must be a dataset name and dataset_options a mapping, got {dataset!r} "
                              f"and {dataset_options!r}")
        spec = {**dataset_options, "name": dataset}
        if dataset in SYNTHETIC and dataset_options:
            raise PluginError(f"{dataset} takes no dataset_options")
        if spec["name"] not in SYNTHETIC:
            cls = dataset_class(spec["name"])
            try:
                cls(**{k: v for k, v in spec.items() if k != "name"})
            except TypeError as exc:
                raise PluginError(f"dataset {spec['name']!r}: {exc}") from None
        self.spec = spec
        self.temperature = check_range("temperature", temperature, 0, MAX_TEMPERATURE, low_open=True)
        if max_images is not None and (not isinstance(max_images, int) or isinstance(max_images, bool)
                                       or not 1 <= max_images <= MAX_IMAGES):
            raise PluginError(f"max_images must be an integer from 1 to {MAX_IMAGES} or null, got {max_images!r}")
        self.max_images = max_images
        self._x = None  # the OOD test inputs, loaded once per run

    def check_config(self, config: dict, dataset) -> None:
        """The OOD set must be inputs of the same kind and shape as the in-distribution data, told from the
        two datasets' declared shapes (tabular features against images, another image size)."""
        if self.spec["name"] in SYNTHETIC or dataset is None:
            return
        cls = dataset_class(self.spec["name"])
        ood = cls(**{k: v for k, v in self.spec.items() if k != "name"})
        if getattr(cls, "task", "classification") != "classification" and len(_shape(ood) or ()) != 3:
            raise PluginError(f"OOD dataset {self.spec['name']!r} is a {cls.task} dataset of tabular features; "
                              "it needs images of the same shape as the in-distribution data")
        mine, theirs = _shape(dataset), _shape(ood)
        if mine is not None and theirs is not None and mine != theirs:
            kind = lambda s: "images" if len(s) == 3 else "features"  # noqa: E731
            raise PluginError(f"OOD dataset {self.spec['name']!r} has {kind(theirs)} of shape {theirs}, the "
                              f"in-distribution data {kind(mine)} of shape {mine}; they must match")

    def check(self, data) -> None:
        if self.spec["name"] in SYNTHETIC:
            return
        x, test = self._load(), data.test.x
        if x.dtype != test.dtype or tuple(x.shape[1:]) != tuple(test.shape[1:]):
            raise PluginError(f"OOD dataset {self.spec['name']!r} has inputs {tuple(x.shape[1:])} ({x.dtype}), "
                              f"the in-distribution data {tuple(test.shape[1:])} ({test.dtype}); they must match")

    def _load(self) -> torch.Tensor:
        """The OOD dataset's test inputs (its first ``max_images``), loaded once."""
        if self._x is None:
            cls = dataset_class(self.spec["name"])
            x = cls(**{k: v for k, v in self.spec.items() if k != "name"}).load().test.x
            self._x = x[: self.max_images] if self.max_images else x
        return self._x

    def _ood_images(self, ctx: EvalContext) -> torch.Tensor:
        """The OOD set: network inputs for Outlier Exposure's noise, pixel units otherwise."""
        test = ctx.splits["test"].x
        name = self.spec["name"]
        if name in SYNTHETIC:  # drawn per evaluation from the private generator
            n = (len(test) if name in PIXEL_NOISE else max(1, len(test) // OE_FRACTION))
            n = n if self.max_images is None else min(n, self.max_images) if name in INPUT_NOISE \
                else self.max_images
            shape = (n, *test.shape[1:])
            g, dev = ctx.generator, ctx.device
            if name == "gaussian_noise":
                return (0.5 * torch.randn(shape, device=dev, generator=g)).clamp(-1, 1)
            if name == "uniform_noise":
                return torch.rand(shape, device=dev, generator=g) * 2 - 1
            if name == "pixel_uniform_noise":
                return torch.rand(shape, device=dev, generator=g)
            return (0.5 + torch.randn(shape, device=dev, generator=g)).clamp(0, 1)
        self.check(ctx.data)
        return ctx.pixels(self._x.to(ctx.device))

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        logits_in, _ = ctx.predict(model, "test")
        ood = self._ood_images(ctx)
        if self.spec["name"] in INPUT_NOISE:  # already network inputs: no normalization
            def out_logits(x):
                with torch.no_grad(), ctx.autocast():
                    return model(x).float()
        else:
            def out_logits(x):
                return ctx.logits(model, x)
        logits_out = torch.cat([out_logits(ood[i:i + ctx.batch_size]) for i in range(0, len(ood), ctx.batch_size)])
        out = {}
        for s in SCORES:
            f = msp if s == "msp" else (lambda z: energy(z, self.temperature))
            s_in, s_out = f(logits_in).cpu().numpy(), f(logits_out).cpu().numpy()
            out.update({f"ood_{s}_auroc": auroc(s_in, s_out), f"ood_{s}_aupr": aupr(s_in, s_out),
                        f"ood_{s}_aupr_out": aupr(-s_out, -s_in), f"ood_{s}_fpr95": fpr_at_tpr(s_in, s_out, 0.95)})
        return out
