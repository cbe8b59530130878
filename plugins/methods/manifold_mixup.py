"""Manifold Mixup (Verma et al., ICML 2019)."""
import torch
import torch.nn.functional as F

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate, lam_tensor,
                        permutation, soft_targets)
from mixcli.mixing.partners import check_partners, uniform_partners

CRITERIA = ("soft_ce", "bce_softmax")


def bce_of_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official code's objective: ``mean_{b,k} -[t_bk log p_bk + (1 - t_bk) log(1 - p_bk)]`` with
    ``p = softmax(logits)`` and the mixed soft target ``t`` (``nn.BCELoss()(softmax(z), t)``: the mean over
    all B x K entries, each log clamped at -100)."""
    return F.binary_cross_entropy(torch.softmax(logits.float(), dim=1), target)


class ManifoldMixup(Method):
    """Manifold Mixup: mix hidden representations at a randomly chosen stage of the network.

    Verma, Lamb, Beckham, Najafi, Mitliagkas, Lopez-Paz, Bengio, "Manifold Mixup: Better Representations by
    Interpolating Hidden States", ICML 2019.

        k ~ Uniform(positions);  lam ~ Beta(alpha, alpha);  h_k~ = lam h_k(x_i) + (1 - lam) h_k(x_j)
        logits = f_{k->out}(h_k~);  y~ = lam y_i + (1 - lam) y_j

    ``positions`` index the model's stages: 0 is the input, k the output of stage k (the paper's CIFAR
    setting, {input, block 1, block 2}, is the default [0, 1, 2]); positions beyond the model are dropped
    with the remaining ones used. alpha = 2.0 is the paper's CIFAR value. One lambda per batch.
    Regression: float targets (N, D) mix the same way; ``positions: [1]`` with the ``mlp`` model is the C-Mixup
    paper's ManiMix baseline (mixing after the first hidden layer). ``partners: dataset`` draws each row's
    partner uniformly from the whole training set with replacement, as the C-Mixup reference does for this
    baseline (its ``mixtype random``; the partner's hidden state comes from its own forward pass);
    ``partners: batch`` (default) permutes the batch, as the Manifold Mixup reference.

    Criterion (classification). The paper trains on the mixed cross-entropy, ``criterion: soft_ce`` (the
    default: the configured loss plugin is used, e.g. ``soft_ce``). The official code
    (``vikasverma1077/manifold_mixup``, ``main.py``) instead minimises the binary cross-entropy of the
    softmax outputs against the mixed target, averaged over the B x K entries::

        L_ref = mean_{b,k} -[t_bk log p_bk + (1 - t_bk) log(1 - p_bk)],   p = softmax(f(h~)),  t = y~

    ``criterion: bce_softmax`` uses it (set ``MixOutput.loss``; the loss plugin is then not used), for
    comparisons with the published numbers. It is about K times smaller than the cross-entropy (so at the
    same learning rate it trains with a much smaller effective step) and penalises the non-target classes
    too. Measured (``experiments/reference_options_digits.yaml``: ``cnn`` on digits, SGD lr 0.05, 15 epochs,
    5 seeds, paired by seed), bce_softmax minus soft_ce: accuracy -6.35 +- 1.07 points, NLL +0.62 +- 0.02,
    ECE +29.8 +- 1.5 points (all 5 seeds worse): at a learning rate tuned for cross-entropy it undertrains;
    the official code pairs it with its own, much longer schedule (CIFAR: lr 0.1, 2000 epochs).
    """

    family = "feature"
    paper = "Verma et al., Manifold Mixup, ICML 2019"

    def __init__(self, alpha: float = 2.0, positions: list = (0, 1, 2), label_smoothing: float = 0.0,
                 criterion: str = "soft_ce", partners: str = "batch"):
        check_range("alpha", alpha, 0, low_open=True)
        if criterion not in CRITERIA:
            raise PluginError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        self.partners = check_partners(partners)
        positions = list(positions)
        if not positions or not all(isinstance(p, int) and p >= 0 for p in positions):
            raise PluginError(f"positions must be a non-empty list of stage indices >= 0, got {positions}")
        self.alpha, self.positions, self.smoothing = alpha, positions, label_smoothing

    def check_model(self, model: Model, input_shape: tuple[int, ...]) -> None:
        self.usable_positions(model)

    def usable_positions(self, model: Model) -> list[int]:
        top = model.embed_position
        usable = [p for p in self.positions if p <= top]
        if not usable:
            raise PluginError(f"positions {self.positions} are all beyond this model, whose positions are "
                              f"0..{top} (0 = input, {top} = the embedding before the classifier)")
        return usable

    def requires(self) -> frozenset[str]:
        return frozenset({"stages"} if any(p > 0 for p in self.positions) else set()) | (
            {"train"} if self.partners == "dataset" else set()) | (
            {"class_labels"} if self.criterion != "soft_ce" else set())  # its own loss reads the class ids

    def setup(self, ctx: Context) -> None:
        self.usable = self.usable_positions(ctx.model)
        if self.criterion != "soft_ce" and ctx.task != "classification":
            raise PluginError(f"criterion {self.criterion} is for classification; regression uses the loss plugin")

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        k = self.usable[int(ctx.rng.integers(len(self.usable)))]
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        n = batch.x.shape[0]
        lam_t = lam_tensor(lam, n, batch.x.device)
        if self.partners == "dataset":
            x2, y2 = ctx.fetch(uniform_partners(ctx.rng, n, len(ctx.train), batch.x.device))
            h = lam * model.forward_to(batch.x, k) + (1 - lam) * model.forward_to(x2, k)
        else:
            perm = permutation(ctx, n)
            h = interpolate(model.forward_to(batch.x, k), perm, lam_t)
            y2 = batch.y[perm]
        out = MixOutput(model.forward_from(h, k), batch.y, y2, lam_t, self.smoothing)
        if self.criterion == "bce_softmax":
            out.loss = bce_of_softmax(out.logits, soft_targets(out, ctx.num_classes))
        return out
