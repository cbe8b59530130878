"""ResizeMix (Qin et al., 2020): paste the whole partner image, shrunk, into the image."""
from __future__ import annotations

import torch.nn.functional as F
from mixcli.mixing.boxes import box_lam, check_images

from mixcli.api import Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation

MODES = ("nearest", "bilinear", "bicubic", "area")


class ResizeMix(Method):
    """ResizeMix: paste the partner image resized to a random scale; labels mixed by the patch's area.

    Qin, Fang, Zhang, Liu, Wei, Wang, Wang, "ResizeMix: Mixing Data with Preserved Object Information and
    True Labels", arXiv 2012.11101, 2020.

        tau ~ U(lo, hi);  P = resize(x_j, (int(tau H), int(tau W)))   (x_j = x[perm], the whole image)
        x~ = x_i with P pasted at a uniformly random position (the patch lies wholly inside the image)
        y~ = lam y_i + (1 - lam) y_j,   lam = 1 - patch_area / (H W)   (~ 1 - tau^2)

    One scale and one position per batch. Options: ``scope`` = [lo, hi] (the paper's (alpha, beta) =
    (0.1, 0.8)); ``prob`` (1.0): probability of mixing a batch; ``interpolation`` (nearest, as OpenMixup's
    implementation; bilinear / bicubic are antialiased, area also available); ``label_smoothing`` (0.0).
    Patch sides are at least one pixel. (OpenMixup instead clips a CutMix-style box at the border and squeezes
    the image into it; its CIFAR configs draw tau from Beta(1, 1) with re-draws outside the scope.)
    """

    family = "input"
    paper = "Qin et al., ResizeMix, arXiv 2012.11101, 2020"
    needs = ("images",)

    def __init__(self, scope: list = (0.1, 0.8), prob: float = 1.0, interpolation: str = "nearest",
                 label_smoothing: float = 0.0):
        scope = list(scope)
        if not (len(scope) == 2 and 0 < scope[0] <= scope[1] <= 1):
            raise PluginError(f"scope must be [lo, hi] with 0 < lo <= hi <= 1, got {scope}")
        check_range("prob", prob, 0, 1)
        if interpolation not in MODES:
            raise PluginError(f"interpolation must be one of {', '.join(MODES)}, got {interpolation!r}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.scope, self.prob, self.interpolation = (float(scope[0]), float(scope[1])), prob, interpolation
        self.smoothing = label_smoothing

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "resizemix")

    def draw(self, ctx: Context, h: int, w: int):
        """(lam, box) for one batch: the patch's box (y1, y2, x1, x2), None when the batch is not mixed."""
        if self.prob < 1 and ctx.rng.random() >= self.prob:
            return 1.0, None
        tau = ctx.rng.uniform(*self.scope)
        ph, pw = max(1, int(tau * h)), max(1, int(tau * w))
        y1, x1 = int(ctx.rng.integers(0, h - ph + 1)), int(ctx.rng.integers(0, w - pw + 1))
        box = (y1, y1 + ph, x1, x1 + pw)
        return float(box_lam(box, h, w)), box

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, n = batch.x, batch.x.shape[0]
        perm = permutation(ctx, n)
        lam, box = self.draw(ctx, x.shape[-2], x.shape[-1])
        if box is not None:
            y1, y2, x1, x2 = box
            smooth = self.interpolation in ("bilinear", "bicubic")
            patch = F.interpolate(x[perm], size=(y2 - y1, x2 - x1), mode=self.interpolation,
                                  **({"align_corners": False, "antialias": True} if smooth else {}))
            x = x.clone()
            x[..., y1:y2, x1:x2] = patch
        return MixOutput(model(x), batch.y, batch.y[perm], lam_tensor(lam, n, x.device), self.smoothing)
