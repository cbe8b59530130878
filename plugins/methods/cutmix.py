"""CutMix (Yun et al., ICCV 2019)."""
import math

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, lam_tensor, permutation


def cut_box(lam: float, h: int, w: int, rng, minmax=None) -> tuple[int, int, int, int]:
    """The box (y1, y2, x1, x2) that CutMix pastes, for mixing ratio ``lam``.

    Default (Yun et al.; torchvision's CutMix): centre (cx, cy) uniform over the pixels, half-sides
    ``int(0.5 * sqrt(1 - lam) * W)`` and ``int(0.5 * sqrt(1 - lam) * H)``, clipped to the image.
    With ``minmax = (lo, hi)`` (timm): side lengths uniform in [lo, hi] times the image size, box inside.
    """
    if minmax is not None:
        ch = int(rng.integers(int(h * minmax[0]), int(h * minmax[1]) + 1))
        cw = int(rng.integers(int(w * minmax[0]), int(w * minmax[1]) + 1))
        y1 = int(rng.integers(0, h - ch + 1))
        x1 = int(rng.integers(0, w - cw + 1))
        return y1, y1 + ch, x1, x1 + cw
    cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
    r = 0.5 * math.sqrt(1.0 - lam)
    rw, rh = int(r * w), int(r * h)
    return max(cy - rh, 0), min(cy + rh, h), max(cx - rw, 0), min(cx + rw, w)


class CutMix(Method):
    """CutMix: paste a box from a partner image; labels mixed by the box's area.

    Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019.

        lam ~ Beta(alpha, alpha);  x~ = M * x_i + (1 - M) * x_j  with M = 0 inside a box of area (1-lam)WH
        y~ = lam' y_i + (1 - lam') y_j,  lam' = 1 - box_area / (W H)   (``correct_lam``: the clipped box's area)

    One box and one lambda per batch. ``minmax`` = [lo, hi] draws the box sides uniformly as fractions of the
    image instead (timm), and then lambda is always the box's area. ``prob``: probability of mixing a batch.
    """

    family = "input"
    paper = "Yun et al., CutMix, ICCV 2019"

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, minmax: list | None = None,
                 correct_lam: bool = True, label_smoothing: float = 0.0):
        if alpha <= 0:
            raise PluginError(f"alpha must be > 0, got {alpha}")
        if not 0 <= prob <= 1:
            raise PluginError(f"prob must be in [0, 1], got {prob}")
        if minmax is not None and not (len(minmax) == 2 and 0 < minmax[0] <= minmax[1] <= 1):
            raise PluginError(f"minmax must be [lo, hi] with 0 < lo <= hi <= 1, got {minmax}")
        if not 0 <= label_smoothing < 1:
            raise PluginError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.alpha, self.prob, self.minmax, self.correct = alpha, prob, minmax, correct_lam
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        if ctx.train.x.dim() != 4:
            raise PluginError("cutmix needs image inputs (N, C, H, W); this dataset has "
                              f"inputs of shape {tuple(ctx.train.x.shape[1:])}")

    def draw(self, ctx: Context, h: int, w: int):
        """(lam, box) for one batch; lam is the label weight of the unpasted image."""
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return 1.0, None
        lam = float(ctx.rng.beta(self.alpha, self.alpha))
        y1, y2, x1, x2 = cut_box(lam, h, w, ctx.rng, self.minmax)
        if self.correct or self.minmax is not None:
            lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
        return lam, (y1, y2, x1, x2)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x = batch.x
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        perm = permutation(ctx, n)
        lam, box = self.draw(ctx, h, w)
        if box is not None:
            y1, y2, x1, x2 = box
            x = x.clone()
            x[:, :, y1:y2, x1:x2] = batch.x[perm][:, :, y1:y2, x1:x2]
        return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
