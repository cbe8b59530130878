"""SnapMix (Huang, Wang, Tao, AAAI 2021): semantically proportional label mixing from class activation maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mixcli.api import Batch, Context, Method, MixOutput, Model, check_range, permutation
from mixcli.mixing.boxes import check_images, cut_box
from mixcli.mixing.inputs import probe_input


def semantic_maps(fmap: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                  size: tuple[int, int]) -> torch.Tensor:
    """SnapMix's normalised CAM of each row's own class, (B, H, W) at the image size (``get_spm``):
    ``CAM = ReLU(F) * w_y + b_y`` (the 1x1 convolution of the ReLU'd last map with the classifier's row of
    class y), upsampled bilinearly (align_corners=False), shifted to minimum 0 and divided by its sum."""
    with torch.autocast(fmap.device.type, enabled=False):  # float32 maps under bf16 training too
        f = F.relu(fmap.float())
        cam = torch.einsum("bchw,bc->bhw", f, weight.float()[y])
        if bias is not None:
            cam = cam + bias.float()[y].view(-1, 1, 1)
        cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        cam = cam - cam.amin((1, 2), keepdim=True)
        return cam / cam.sum((1, 2), keepdim=True)


def snapmix_weights(cam_a: torch.Tensor, cam_b: torch.Tensor, box_a, box_b, same: torch.Tensor, area_lam: float):
    """(rho_a, rho_b) of SnapMix for boxes ``box_a`` (where the patch goes, in x_a) and ``box_b`` (where it
    comes from, in x_b), both (y1, y2, x1, x2) host ints:

        rho_a = 1 - sum CAM_a[box_a] / (sum CAM_a + 1e-8),   rho_b = sum CAM_b[box_b] / (sum CAM_b + 1e-8)
        rows with y_a = y_b: rho_a = rho_b = rho_a + rho_b;  NaN -> the area ratio (area_lam, 1 - area_lam)
    """
    (a1, a2, a3, a4), (b1, b2, b3, b4) = box_a, box_b
    rho_a = 1 - cam_a[:, a1:a2, a3:a4].sum((1, 2)) / (cam_a.sum((1, 2)) + 1e-8)
    rho_b = cam_b[:, b1:b2, b3:b4].sum((1, 2)) / (cam_b.sum((1, 2)) + 1e-8)
    both = rho_a + rho_b
    rho_a, rho_b = torch.where(same, both, rho_a), torch.where(same, both, rho_b)
    rho_a = torch.where(torch.isnan(rho_a), torch.full_like(rho_a, area_lam), rho_a)
    rho_b = torch.where(torch.isnan(rho_b), torch.full_like(rho_b, 1 - area_lam), rho_b)
    return rho_a, rho_b


class SnapMix(Method):
    """SnapMix: CutMix with a resized partner box and labels weighted by each image's CAM mass.

    Huang, Wang, Tao, "SnapMix: Semantically Proportional Mixing for Augmenting Fine-grained Data",
    AAAI 2021; defaults and steps as the official code (Shaoli-Huang/SnapMix, ``utils/mixmethod.py``).

        CAM_i = normalised class activation map of x_i for its label (:func:`semantic_maps`), from a
                gradient-free forward of the clean batch (the model in its current mode, as the reference)
        lam1, lam2 ~ Beta(beta, beta);  box_a = CutMix box for lam1 in x_a, box_b = CutMix box for lam2
        x~ = x_a with box_a <- bilinear_resize(x_b[box_b])    (align_corners=True)
        rho_a = 1 - sum CAM_a[box_a],  rho_b = sum CAM_b[box_b]   (see :func:`snapmix_weights`)
        L = mean_i rho_a CE(f(x~), y_a) + rho_b CE(f(x~), y_b)      (rho_a + rho_b need not be 1)

    The weights do not sum to one, so the method sets its own loss (the loss plugin is not used; the
    reported ``lam`` is rho_a / (rho_a + rho_b)). One pair of boxes per batch; no mixing when either box is
    empty. Options: ``beta`` (5.0), ``prob`` (1.0; the reference uses 0.5 when training from scratch).
    Needs a model whose last stage is a spatial map with a linear classifier after global average pooling
    (:meth:`mixcli.api.Model.class_activation`: every built-in CNN and timm CNNs).
    """

    family = "input"
    paper = "Huang et al., SnapMix, AAAI 2021"
    needs = ("images", "class_labels", "class_activation")
    tasks = ("classification",)

    def __init__(self, beta: float = 5.0, prob: float = 1.0):
        check_range("beta", beta, 0, low_open=True)
        check_range("prob", prob, 0, 1)
        self.beta, self.prob = beta, prob

    def setup(self, ctx: Context) -> None:
        check_images(ctx, "snapmix")
        x = probe_input(ctx, ctx.model)  # in the model's dtype (a bf16 model refuses float32)
        with torch.no_grad():
            ctx.model.class_activation(x)  # fails early, with the model's reason, when it has no CAMs

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        h, w = x.shape[-2], x.shape[-1]
        rng = ctx.rng
        if self.prob < 1 and rng.random() >= self.prob:
            return MixOutput.unmixed(model(x), y)
        lam1, lam2 = rng.beta(self.beta, self.beta), rng.beta(self.beta, self.beta)
        perm = permutation(ctx, n)
        box_a, box_b = cut_box(lam1, h, w, rng), cut_box(lam2, h, w, rng)
        area_a = (box_a[1] - box_a[0]) * (box_a[3] - box_a[2])
        area_b = (box_b[1] - box_b[0]) * (box_b[3] - box_b[2])
        if area_a == 0 or area_b == 0:
            return MixOutput.unmixed(model(x), y)
        with torch.no_grad():
            _, fmap, weight, bias = model.class_activation(x)
            cam = semantic_maps(fmap, weight, bias, y, (h, w))
        yb = y[perm]
        area_lam = 1 - area_a / (h * w)
        rho_a, rho_b = snapmix_weights(cam, cam[perm], box_a, box_b, y == yb, area_lam)
        patch = F.interpolate(x[perm][..., box_b[0]:box_b[1], box_b[2]:box_b[3]],
                              size=(box_a[1] - box_a[0], box_a[3] - box_a[2]), mode="bilinear", align_corners=True)
        mixed = x.clone()
        mixed[..., box_a[0]:box_a[1], box_a[2]:box_a[3]] = patch
        logits = model(mixed)
        logp = F.log_softmax(logits.float(), 1)
        ce_a = -logp.gather(1, y.view(-1, 1)).squeeze(1)
        ce_b = -logp.gather(1, yb.view(-1, 1)).squeeze(1)
        loss = (rho_a * ce_a + rho_b * ce_b).mean()
        lam = rho_a / (rho_a + rho_b).clamp_min(1e-8)
        return MixOutput(logits, y, yb, lam, loss=loss, info={"rho_sum": (rho_a + rho_b).mean()})
