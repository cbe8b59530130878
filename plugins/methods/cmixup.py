"""C-Mixup (Yao et al., NeurIPS 2022): mixup whose partners are drawn by label similarity (regression)."""
from __future__ import annotations

import torch

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, lam_tensor
from mixcli.mixing.partners import KERNELS, PartnerSampler, draw_partners


class CMixup(Method):
    """C-Mixup: mix each example with a partner sampled by a kernel on the label distance (regression).

    Yao, Wang, Zhang, Zou, Finn, "C-Mixup: Improving Generalization in Regression", NeurIPS 2022
    (arXiv:2210.05775; reference code github.com/huaxiuyao/C-Mixup, ``src/algorithm.py``). For each batch row
    ``i`` the partner ``j`` is drawn over ALL ``N`` training examples (``j = i`` included, with replacement,
    independently per row) with ::

        P(j | i) = k(y_i, y_j) / sum_m k(y_i, y_m),   gaussian: k = exp(-||y_i - y_j||^2 / (2 sigma^2))
                                                       tophat:   k = 1[||y_i - y_j|| < sigma]
        lam ~ Beta(alpha, alpha)   (ONE lambda per batch, as in the reference code)
        h~ = lam * f_{0->p}(x_i) + (1 - lam) * f_{0->p}(x_j),   y~ = lam * y_i + (1 - lam) * y_j
        loss = MSE(f_{p->out}(h~), y~)

    Options:

    - ``alpha`` (2.0, every dataset of the reference): the Beta parameter.
    - ``sigma`` (1.0, the reference code's command-line default): kernel bandwidth in RAW label units
      (labels are not standardised), dataset-specific: Airfoil 1.75 (dB), NO2 1.2, Crime 4.0, SkillCraft 1.0.
      A tiny sigma makes every row its own partner (ERM); a huge one gives uniform partners (vanilla mixup).
    - ``kernel`` (gaussian): gaussian or tophat (sklearn ``KernelDensity`` conventions, see mixcli.mixing.partners).
    - ``position`` (0): where the pair is mixed; 0 = the inputs (the paper's Algorithm 1, and the
      reference's ``use_manifold 0`` for NO2 / SkillCraft / Electricity); 1 = after the first hidden layer
      (the reference's ``use_manifold 1``, used for Airfoil, Exchange-Rate, Crime); k = after model stage k.
    - ``block_size`` (1024): probability rows are built at most this many rows at a time (memory
      ``block_size x N`` float32, never ``N x N``).

    The kernel rows of the batch come from :func:`mixcli.mixing.partners.kernel_weights`, a block of rows at a
    time; the draw is inverse-CDF sampling with uniforms from the run's seeded host generator ``ctx.rng``
    (what the reference's ``np.random.choice(N, p=row)`` does), so runs are reproducible and resumable and
    the step never waits on the device. The partners' inputs come from ``ctx.fetch``.
    """

    family = "input"
    tasks = ("regression",)
    paper = "Yao et al., C-Mixup: Improving Generalization in Regression, NeurIPS 2022"
    needs = ("train", "index", "stages")

    def __init__(self, alpha: float = 2.0, sigma: float = 1.0, kernel: str = "gaussian", position: int = 0,
                 block_size: int = 1024):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise PluginError(f"alpha (the Beta(alpha, alpha) parameter) must be a number > 0, got {alpha!r}")
        if kernel not in KERNELS:
            raise PluginError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise PluginError(f"position must be an integer >= 0 (0 = inputs, 1 = after the first hidden "
                              f"layer), got {position!r}")
        # PartnerSampler checks sigma and block_size the same way everywhere
        PartnerSampler(torch.zeros(1, 1), "cmixup", sigma, kernel, block_size)
        self.alpha, self.sigma, self.kernel = float(alpha), float(sigma), kernel
        self.position, self.block_size = position, block_size

    def check_model(self, model: Model, input_shape: tuple[int, ...] = ()) -> None:
        top = model.embed_position
        if self.position > top:
            raise PluginError(f"position {self.position} is beyond this model, whose positions are 0..{top} "
                              f"(0 = input, 1 = after the first stage, {top} = the embedding)")

    def requires(self) -> frozenset[str]:
        return frozenset({"train", "index", "stages"})  # forward_to / forward_from even at position 0

    def setup(self, ctx: Context) -> None:
        if ctx.task != "regression":
            raise PluginError("cmixup samples partners by label distance and needs task: regression")
        self.check_model(ctx.model)
        self.sampler = PartnerSampler(ctx.train.y, "cmixup", self.sigma, self.kernel, self.block_size)

    def partners(self, index: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Training-set indices of the partners of the training rows ``index`` (B,), one draw per row, by
        inverse-CDF sampling (:func:`mixcli.mixing.partners.draw_partners`) with uniforms from ``ctx.rng``. Every
        row's total weight is >= 1 (its own label is at distance 0), so no check (and no sync) is needed."""
        u = torch.from_numpy(ctx.rng.random(index.shape[0]))
        return draw_partners(index, self.sampler.y_all, self.sigma, self.kernel, u, self.block_size)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        partner = self.partners(batch.index, ctx)
        x2, y2 = ctx.fetch(partner)
        n = batch.x.shape[0]
        lam_t = lam_tensor(lam, n, batch.x.device)
        k = self.position
        h = lam * model.forward_to(batch.x, k) + (1.0 - lam) * model.forward_to(x2, k)
        return MixOutput(model.forward_from(h, k), batch.y, y2, lam_t)
