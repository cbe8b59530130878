"""White-box L-infinity attacks: accuracy under FGSM and PGD.

Both attack the model in eval mode, on the test split, in *pixel units*: images in [0, 1] (``uint8 / 255``)
before the dataset's normalization, so ``eps: 8`` means 8/255, the convention of the papers (float-feature
datasets: ``eps / 255`` in feature units, no clipping). Gradients are taken with respect to the input only
(``torch.autograd.grad``), so no parameter's ``.grad`` changes; the forward pass runs under the run's autocast
(bf16 on CUDA) and the perturbation is computed in float32. Random starts draw from the evaluator's private
generator (``EvalContext.generator``), never from the training RNG.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mixcli.api import EvalContext, Evaluator, PluginError, check_range, metric

#: eps and step are in 1/255 pixel units: 255 already moves a pixel across its whole range
MAX_EPS = 255.0
#: each PGD step is a forward and a backward pass over the whole test split after training (the papers use
#: 7 to 50, robustness evaluations a few hundred); 10000 steps of CIFAR-10's test set already take hours
MAX_STEPS = 10_000


def _bounded(name: str, value: float) -> float:
    if value > MAX_EPS:
        raise PluginError(f"{name} must be <= {MAX_EPS:g} (1/255 pixel units: 255 spans a pixel's whole range), "
                          f"got {value}")
    return value


def _loss_grad(model, ctx: EvalContext, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dp of the summed cross-entropy of the model on pixel-unit inputs ``p`` (float32)."""
    p = p.detach().requires_grad_(True)
    with torch.enable_grad():
        with ctx.autocast():
            logits = model(ctx.to_input(p))
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, p)
    return grad.float()


def _project(p: torch.Tensor, clean: torch.Tensor, eps: float, clip: bool) -> torch.Tensor:
    """Into the L-inf ball of radius eps around ``clean`` (and [0, 1] for images)."""
    p = torch.max(torch.min(p, clean + eps), clean - eps)
    return p.clamp(0.0, 1.0) if clip else p


def fgsm(grad_fn: Callable, p: torch.Tensor, y: torch.Tensor, eps: float, clip: bool) -> torch.Tensor:
    """``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)`` (Goodfellow et al. 2015)."""
    return _project(p + eps * grad_fn(p, y).sign(), p, eps, clip)


def pgd(grad_fn: Callable, p: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int, clip: bool,
        start: torch.Tensor | None = None) -> torch.Tensor:
    """``x_0 = x + start`` (``start`` uniform in [-eps, eps] for a random start, else 0);
    ``x_{t+1} = Proj_{B_inf(x, eps) ∩ [0,1]}(x_t + step * sign(grad CE(f(x_t), y)))``, returns ``x_steps``
    (Madry et al. 2018)."""
    adv = p if start is None else _project(p + start, p, eps, clip)
    for _ in range(steps):
        adv = _project(adv + step * grad_fn(adv, y).sign(), p, eps, clip)
    return adv


class _Attack(Evaluator):
    key = ""

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        correct = torch.zeros((), device=ctx.device)
        n = 0
        grad_fn = lambda p, y: _loss_grad(model, ctx, p, y)  # noqa: E731
        for p, y in ctx.batches("test"):
            adv = self.attack(grad_fn, p, y, ctx)
            correct += (ctx.logits(model, adv).argmax(1) == y).sum()
            n += len(y)
        return {f"{self.key}_accuracy": float(correct) / max(n, 1)}

    def attack(self, grad_fn, p, y, ctx):  # pragma: no cover - abstract
        raise NotImplementedError


class FGSM(_Attack):
    """Accuracy under the fast gradient sign attack (one signed-gradient step of size eps).

    ``x_adv = clip(x + eps/255 * sign(grad_x CE(f(x), y)), 0, 1)`` on the unnormalized image; the metric
    ``fgsm_accuracy`` is the test accuracy on ``x_adv``. Goodfellow, Shlens, Szegedy, "Explaining and
    Harnessing Adversarial Examples", ICLR 2015; used for mixup by Zhang et al. (ICLR 2018), Verma et al.
    (Manifold Mixup, ICML 2019) and AlignMixup (CVPR 2022).
    """

    paper = "Goodfellow et al., Explaining and Harnessing Adversarial Examples, ICLR 2015"
    key = "fgsm"
    metrics = (metric("fgsm_accuracy", True, percent=True,
                      doc="test accuracy under FGSM, L-inf radius eps/255 in pixel units"),)

    def __init__(self, eps: float = 8.0):
        self.eps = _bounded("eps", check_range("eps", eps, 0))

    def attack(self, grad_fn, p, y, ctx):
        return fgsm(grad_fn, p, y, self.eps / 255.0, ctx.images)


class PGD(_Attack):
    """Accuracy under projected gradient descent (steps of size step, random start, L-inf radius eps).

    ``x_0 = x + U(-eps, eps)`` (``random_start``), ``x_{t+1} = Proj(x_t + step * sign(grad_x CE(f(x_t), y)))``
    onto the eps-ball around x and [0, 1], for ``steps`` steps; eps and step in 1/255 pixel units. The metric
    ``pgd_accuracy`` is the test accuracy on the last iterate (Madry et al.'s attack, as in their code).
    Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018.
    """

    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"
    key = "pgd"
    metrics = (metric("pgd_accuracy", True, percent=True,
                      doc="test accuracy under PGD (last iterate), L-inf radius eps/255 in pixel units"),)

    def __init__(self, eps: float = 8.0, step: float = 2.0, steps: int = 10, random_start: bool = True):
        self.eps = _bounded("eps", check_range("eps", eps, 0))
        self.step = _bounded("step", check_range("step", step, 0, low_open=True))
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise PluginError(f"steps must be an integer from 1 to {MAX_STEPS} (each step is a forward and "
                              f"backward pass over the test split), got {steps!r}")
        if not isinstance(random_start, bool):
            raise PluginError(f"random_start must be true or false, got {random_start!r}")
        self.steps, self.random_start = steps, random_start

    def attack(self, grad_fn, p, y, ctx):
        eps = self.eps / 255.0
        start = None
        if self.random_start:
            start = (torch.rand(p.shape, device=p.device, generator=ctx.generator) * 2 - 1) * eps
        return pgd(grad_fn, p, y, eps, self.step / 255.0, self.steps, ctx.images, start)
