"""Manifold Mixup (Verma et al., ICML 2019)."""
from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate, lam_tensor,
                        permutation)


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
    paper's ManiMix baseline (mixing after the first hidden layer; partners as in ``mixup``, see there).
    """

    family = "feature"
    paper = "Verma et al., Manifold Mixup, ICML 2019"

    def __init__(self, alpha: float = 2.0, positions: list = (0, 1, 2), label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
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

    def setup(self, ctx: Context) -> None:
        self.usable = self.usable_positions(ctx.model)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        k = self.usable[int(ctx.rng.integers(len(self.usable)))]
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        n = batch.x.shape[0]
        perm = permutation(ctx, n)
        lam_t = lam_tensor(lam, n, batch.x.device)
        h = interpolate(model.forward_to(batch.x, k), perm, lam_t)
        return MixOutput(model.forward_from(h, k), batch.y, batch.y[perm], lam_t, self.smoothing)
