"""CutMix (Yun et al., ICCV 2019); its box helpers live in :mod:`mixcli.mixing.boxes`."""
from __future__ import annotations

from mixcli.api import Batch, Context, Method, MixOutput, Model, check_range, lam_tensor, permutation
from mixcli.mixing.boxes import check_images, check_minmax, cutmix_draw, paste


class CutMix(Method):
    """CutMix: paste a box from a partner image; labels mixed by the box's area.

    Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019.

        lam ~ Beta(alpha, alpha);  box: centre uniform, half-sides int(0.5 sqrt(1 - lam) (H, W)) each side of
             it (the reference code's and torchvision's box; timm 1.0.31's rand_bbox splits int(sqrt(1 - lam) H)
             as floor / ceil halves instead, see mixcli.mixing.boxes.cut_box), clipped to the image
        x~ = M * x_i + (1 - M) * x_j  with M = 0 inside the box (x_j = x[perm], perm a random permutation)
        y~ = lam' y_i + (1 - lam') y_j,  lam' = 1 - box_area / (H W)   (``correct_lam``; else lam' = lam)

    One box and one lambda per batch. Options (timm's names): ``alpha`` (1.0, the paper's; OpenMixup uses
    0.2 on CIFAR), ``prob`` (1.0: probability of mixing a batch; the paper uses 0.5 on CIFAR),
    ``minmax`` = [lo, hi] (none; else box sides drawn uniformly from [int(lo H), int(hi H)] (resp. W), the
    upper bound included, where timm 1.0.31 excludes it; lambda is then always the box's area),
    ``correct_lam`` (true), ``label_smoothing`` (0.0).
    """

    family = "input"
    paper = "Yun et al., CutMix, ICCV 2019"
    needs = ("images",)

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, minmax: list | None = None,
                 correct_lam: bool = True, label_smoothing: float = 0.0):
        check_range("alpha", alpha, 0, low_open=True)
        check_range("prob", prob, 0, 1)
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.prob, self.minmax, self.correct = alpha, prob, check_minmax(minmax), correct_lam
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "cutmix")

    def draw(self, ctx: Context, h: int, w: int):
        """(lam, box) for one batch; lam is the label weight of the unpasted image, box None when unmixed."""
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return 1.0, None
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        box, lam = cutmix_draw(ctx.rng, lam, h, w, self.minmax, self.correct)
        return float(lam), box

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        lam, box = self.draw(ctx, x.shape[-2], x.shape[-1])
        if box is not None:
            x = paste(x, perm, box)
        return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
