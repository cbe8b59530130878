"""What the learned mixers (AutoMix, SAMix, AdAutoMix) share: their mask generators, the momentum schedule, the
EMA update and :class:`MomentumMixer`, the base of a method that trains a mixer through a momentum encoder.

Mask generators (``nn.Module``; pure given their weights):

- :class:`MixBlock`: AutoMix's ``PixelMixBlock`` (linear value, one shared q/k conv);
- :class:`SAMixBlock`: the same block in SAMix's configuration (lam-scaled features, q and k of the
  concatenated pair with two convs, a non-linear value path);
- :class:`AdaptiveMask`: AdAutoMix's generator for two or more images (a softmax over the images).

:func:`momentum_at` is OpenMixup's ``CosineScheduleHook``; :func:`ema_` is ``dst <- mu dst + (1 - mu) src``;
:func:`rescale_lam` is SAMix's lambda rescaling; :func:`mixblock_mask_loss` the MixBlock's mask losses;
:func:`adjust_mask_mean` SAMix's ``mask_adjust``; :func:`mixed_ce` the mixed cross-entropy of several labels.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..api import (Context, Method, Model, PluginError, check_range, soft_cross_entropy)
from .boxes import check_images
from .inputs import param_dtype, probe_input

__all__ = ["MixBlock", "SAMixBlock", "AdaptiveMask", "momentum_at", "ema_", "rescale_lam", "mixblock_mask_loss",
           "adjust_mask_mean", "mixed_ce", "MomentumMixer", "UPSAMPLING", "HEADS", "MASK_LOSSES",
           "ENCODER_PASSES"]

UPSAMPLING = ("nearest", "bilinear", "bicubic")
HEADS = ("reference", "shared")
MASK_LOSSES = ("L1", "L1+Variance", "L2+Variance")
ENCODER_PASSES = ("full", "to_mask")


def _attention_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, use_scale: bool) -> torch.Tensor:
    """``softmax(q k / sqrt(C')) v`` in float32 (the references force float32 here): q (B, HW, C'),
    k (B, C', HW), v (B, HW, 1) -> (B, HW, 1)."""
    with torch.autocast(q.device.type, enabled=False):
        p = q.float() @ k.float()
        if use_scale:
            p = p / q.shape[-1] ** 0.5
        return p.softmax(-1) @ v.float()


class MixBlock(nn.Module):
    """OpenMixup's ``PixelMixBlock`` (AutoMix): cross-attention from x_i's features to its partner's.

        q = W_q h_i,  k = W_q h_j  (the same 1x1 conv, C -> C / reduction),  v = W_v h_j  (1x1 conv, C -> 1)
        P = softmax(q^T k / sqrt(C / reduction))   (HW x HW, float32);   m = sigmoid(up(P v))
    ``m`` (B, 1, H, W) is the partner's share of each pixel. ``lam_concat`` appends lam (to h_i) and 1 - lam
    (to h_j) as an extra channel (the ImageNet configs; CIFAR uses none). Weights ~ N(0, 0.01), biases 0.
    """

    def __init__(self, channels: int, reduction: int = 2, lam_concat: bool = False, use_scale: bool = True):
        super().__init__()
        cin = channels + int(lam_concat)
        self.inter = max(channels // reduction, 1)
        self.lam_concat, self.use_scale = lam_concat, use_scale
        self.query = nn.Conv2d(cin, self.inter, 1)
        self.value = nn.Conv2d(cin, 1, 1)
        for conv in (self.query, self.value):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, h: torch.Tensor, lam: float, perm: torch.Tensor, size, mode: str = "nearest"):
        n, _, fh, fw = h.shape
        hi, hj = h, h[perm]
        if self.lam_concat:
            hi = torch.cat([hi, torch.full_like(hi[:, :1], lam)], 1)
            hj = torch.cat([hj, torch.full_like(hj[:, :1], 1 - lam)], 1)
        v = self.value(hj).reshape(n, 1, -1).transpose(1, 2)              # (B, HW, 1)
        q = self.query(hi).reshape(n, self.inter, -1).transpose(1, 2)     # (B, HW, C')
        k = self.query(hj).reshape(n, self.inter, -1)                     # (B, C', HW)
        m = _attention_mask(q, k, v, self.use_scale).reshape(n, 1, fh, fw)
        with torch.autocast(h.device.type, enabled=False):
            return torch.sigmoid(F.interpolate(m, size=size, mode=mode))


def rescale_lam(lam: float, k: float) -> float:
    """SAMix's lambda rescaling (``PixelMixBlock.rescale_lam_mult``): with ``K = k + 1``,
    ``r(lam) = (4/3 lam^3 - 2 lam^2 + K lam) / (K - 2/3)``; r(0) = 0, r(1/2) = 1/2, r(1) = 1, and it bends
    towards y = x as k grows."""
    kk = k + 1
    lam = float(lam)
    return (4 / 3 * lam ** 3 - 2 * lam ** 2 + kk * lam) / (kk - 2 / 3)


class SAMixBlock(nn.Module):
    """The MixBlock of SAMix (OpenMixup's ``PixelMixBlock`` with the SAMix CIFAR config): the pair's features
    are scaled by the (rescaled) lambda, queries and keys are computed from the concatenated pair by two
    convolutions, and the value path is a small non-linear network.

        r = rescale_lam(lam, lam_mul_k)   (r = lam when lam_mul_k < 0)
        a = h_i (1 + lam_mul r),  b = h_j (1 + lam_mul (1 - r))       (lam_residual; else a = r h_i, b = (1 - r) h_j)
        q = W_q [a; b],  k = W_k [a; b]            (x_qk_concat; else q = W_q a, k = W_q b, as AutoMix)
        v = V(b),  V = conv1x1(C -> hidden, no bias) - BatchNorm - ELU - conv1x1(hidden -> 1, no bias)
            (OpenMixup ``ConvNeck``; ``value_hidden: 0`` gives AutoMix's linear 1x1 conv)
        m = sigmoid(up(softmax(q^T k / sqrt(C / reduction)) v))   the partner's share, (B, 1, H, W)
    Conv weights ~ N(0, 0.01), biases 0, BatchNorm weight 1 and bias 0 (the reference's ``init_weights``).
    """

    def __init__(self, channels: int, reduction: int = 2, use_scale: bool = True, lam_mul: float = 1.0,
                 lam_mul_k: float = 0.25, lam_residual: bool = True, value_hidden: int | None = None,
                 x_qk_concat: bool = True):
        super().__init__()
        self.inter = max(channels // reduction, 1)
        self.use_scale, self.lam_mul, self.lam_mul_k = use_scale, float(lam_mul), float(lam_mul_k)
        self.lam_residual, self.x_qk_concat = lam_residual, x_qk_concat
        qk_in = 2 * channels if x_qk_concat else channels
        self.query = nn.Conv2d(qk_in, self.inter, 1)
        self.key = nn.Conv2d(qk_in, self.inter, 1) if x_qk_concat else None
        hidden = max(channels // 2, 1) if value_hidden is None else int(value_hidden)
        if hidden > 0:
            self.value = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ELU(),
                                       nn.Conv2d(hidden, 1, 1, bias=False))
        else:
            self.value = nn.Conv2d(channels, 1, 1)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, std=0.01)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def lam_scale(self, lam: float) -> float:
        return rescale_lam(lam, self.lam_mul_k) if self.lam_mul_k >= 0 else float(lam)

    def forward(self, h: torch.Tensor, lam: float, perm: torch.Tensor, size, mode: str = "bilinear"):
        n, _, fh, fw = h.shape
        a, b = h, h[perm]
        if self.lam_mul > 0:
            r = self.lam_scale(lam)
            if self.lam_residual:
                a, b = a * (1 + r * self.lam_mul), b * (1 + (1 - r) * self.lam_mul)
            else:
                a, b = a * r, b * (1 - r)
        v = self.value(b).reshape(n, 1, -1).transpose(1, 2)               # (B, HW, 1)
        if self.x_qk_concat:
            ab = torch.cat([a, b], 1)
            q, k = self.query(ab), self.key(ab)
        else:
            q, k = self.query(a), self.query(b)
        q = q.reshape(n, self.inter, -1).transpose(1, 2)
        k = k.reshape(n, self.inter, -1)
        m = _attention_mask(q, k, v, self.use_scale).reshape(n, 1, fh, fw)
        with torch.autocast(h.device.type, enabled=False):
            return torch.sigmoid(F.interpolate(m, size=size, mode=mode))


class AdaptiveMask(nn.Module):
    """AdAutoMix's mask generator (``AdaptiveMask``, JinXins/Adversarial-AutoMixup ``Ada_mix_pine.py``) for S >= 2
    feature maps f_1..f_S (the images to mix, each (B, C, H, W)):

        q_i = W_q f_i,  k_i = W_k f_i  (1x1 convs with bias, C -> C / reduction),  v_i = W_v f_i  (1x1, C -> 1)
        A_i = softmax((sum_{j != i} q_i^T k_j) / sqrt(C / reduction))     (HW x HW, float32)
        M = softmax_i(up(A_i v_i))                                         (B, S, H, W): image i's share
    For S = 2 this is the reference's two-image path (A_1 from q_1 and k_2, A_2 from q_2 and k_1).
    ``lam_concat`` appends lam_i (two images: lam and 1 - lam) to f_i as an extra channel. Weights ~ N(0, 0.01),
    biases 0.
    """

    def __init__(self, channels: int, reduction: int = 2, lam_concat: bool = False, use_scale: bool = True):
        super().__init__()
        cin = channels + int(lam_concat)
        self.inter = max(channels // reduction, 1)
        self.lam_concat, self.use_scale = lam_concat, use_scale
        self.conv_q = nn.Conv2d(cin, self.inter, 1)
        self.conv_k = nn.Conv2d(cin, self.inter, 1)
        self.conv_v = nn.Conv2d(cin, 1, 1)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: Sequence[torch.Tensor], lams: Sequence[float], size, mode: str = "bilinear"):
        s = len(feats)
        n, _, fh, fw = feats[0].shape
        if self.lam_concat:
            ls = [lams[0], 1 - lams[0]] if s == 2 else list(lams)
            feats = [torch.cat([f, torch.full_like(f[:, :1], float(v))], 1) for f, v in zip(feats, ls)]
        f = torch.stack(list(feats), 1).flatten(0, 1)                     # (B S, C, H, W)
        q = self.conv_q(f).reshape(n, s, self.inter, -1).float()          # (B, S, C', HW)
        k = self.conv_k(f).reshape(n, s, self.inter, -1).float()
        v = self.conv_v(f).reshape(n, s, -1, 1).float()                   # (B, S, HW, 1)
        with torch.autocast(f.device.type, enabled=False):
            others = k.sum(1, keepdim=True) - k                           # sum over j != i of k_j
            p = q.transpose(2, 3) @ others                                # (B, S, HW, HW)
            if self.use_scale:
                p = p / self.inter ** 0.5
            m = (p.softmax(-1) @ v).reshape(n, s, fh, fw)
            return F.interpolate(m, size=size, mode=mode).softmax(1)


def momentum_at(step: int, total: int, base: float, end: float, start_frac: float = 0.1) -> float:
    """OpenMixup's ``CosineScheduleHook`` (constant warm-up): ``base`` before ``start_frac * total`` steps,
    then ``end - (end - base) (cos(pi step / total) + 1) / 2``."""
    if step < int(total * start_frac):
        return base
    return end - (end - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


@torch.no_grad()
def ema_(dst, src, mu: float) -> None:
    """``dst <- mu dst + (1 - mu) src`` for two matching iterables of tensors (parameters), in place."""
    d = list(dst)
    torch._foreach_mul_(d, mu)
    torch._foreach_add_(d, [p.detach() for p in src], alpha=1 - mu)


def mixblock_mask_loss(m: torch.Tensor, lam: float, mode: str = "L1", margin: float = 0.0) -> torch.Tensor:
    """The MixBlock's mask loss (OpenMixup ``PixelMixBlock.mask_loss``) of the partner's share ``m``
    (B, 1, H, W) and lambda (x_i's share): with mbar the mean of m over the batch and the pixels,

        L1:           max(|1 - mbar - lam| - margin, 0)
        L1+Variance:  max(|1 - mbar - lam| - margin, 0) - 2 mean((m - mbar)^2)
        L2+Variance:  max((1 - mbar - lam)^2 - margin^2, 0) - 2 mean((m - mbar)^2)
    (the variance term rewards masks that are not flat: SAMix's default)."""
    mbar = m.mean()
    if mode == "L1":
        return (1 - mbar - lam).abs().sub(margin).clamp_min(0)
    var = ((m - mbar) ** 2).mean().clamp_min(0)
    if mode == "L1+Variance":
        return (1 - mbar - lam).abs().sub(margin).clamp_min(0) - 2 * var
    if mode == "L2+Variance":
        return ((1 - mbar - lam) ** 2 - margin ** 2).clamp_min(0) - 2 * var
    raise PluginError(f"mask loss must be one of {', '.join(MASK_LOSSES)}, got {mode!r}")


def adjust_mask_mean(m: torch.Tensor, lam: float, eps: float = 1e-8) -> torch.Tensor:
    """SAMix's ``mask_adjust`` (OpenMixup ``AutoMixup.pixel_mixup``): rescale each row's mask so that x_i's mean
    share is ``lam``. With s = clamp(1 - m, eps, 1 - eps) (x_i's share) and sbar its per-row mean:
    sbar > lam + eps: s' = s lam / sbar;  sbar < lam - eps: 1 - s' = (1 - s)(1 - lam) / (1 - sbar);  otherwise
    the row is unchanged. Returns the partner's share 1 - s' (B, 1, H, W)."""
    s = (1 - m).clamp(eps, 1 - eps)
    sbar = s.mean(dim=(1, 2, 3), keepdim=True)
    down = s * (lam / sbar)                                   # x_i's share scaled down to lam
    up = 1 - (1 - s) * ((1 - lam) / (1 - sbar))               # the partner's share scaled down to 1 - lam
    s_new = torch.where(sbar > lam + eps, down, torch.where(sbar < lam - eps, up, 1 - m))
    return 1 - s_new


def mixed_ce(logits: torch.Tensor, labels: Sequence[torch.Tensor], lams: Sequence[float], num_classes: int,
             smoothing: float = 0.0) -> torch.Tensor:
    """``sum_i lam_i CE(logits, y_i)`` (mean over rows; label smoothing ``s`` as :func:`mixcli.api.soft_targets`)
    for weights that sum to 1: the soft cross-entropy of the mixed target ``sum_i lam_i onehot_s(y_i)``."""
    off = smoothing / num_classes
    target = torch.zeros(logits.shape[0], num_classes, device=logits.device, dtype=torch.float32)
    for y, lam in zip(labels, lams):
        target.scatter_add_(1, y.view(-1, 1), torch.full((y.shape[0], 1), float(lam) * (1 - smoothing),
                                                          device=logits.device))
    target += off * float(sum(lams))
    return soft_cross_entropy(logits, target)



def copy_optimizer(run_opt: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """An optimizer of ``run_opt``'s class and settings for ``params`` (the settings its constructor takes:
    e.g. AdamW's ``defaults`` hold a ``decoupled_weight_decay`` that ``AdamW()`` refuses)."""
    import inspect

    accepted = inspect.signature(type(run_opt).__init__).parameters
    return type(run_opt)(params, **{k: v for k, v in run_opt.defaults.items() if k in accepted})

class MomentumMixer(Method):
    """Base of the learned mixers: a mask generator (``self.block``) trained through a momentum copy f_k of the
    model, with OpenMixup's four heads, all in the method's state.

    A subclass sets, in ``__init__``: ``position`` (the stage whose features feed the generator, None: the
    stage before the last), ``heads`` (:data:`HEADS`), ``lr``/``min_lr`` (the generator's SGD: momentum 0.9,
    weight decay 1e-4, cosine per epoch from ``lr`` to ``min_lr``), ``base_m``/``end_m`` (the momentum
    schedule, :func:`momentum_at`) and ``smoothing``; and implements :meth:`make_block` and ``__call__``.
    The generator's parameters step as soon as their gradients are accumulated in the backward pass (the
    engine's optimizer never sees them). ``heads: reference``: ``head_one_q`` is the model's classifier,
    ``head_mix_q`` a second linear head on the pooled features trained at the run's classifier learning rate
    with the run's optimizer class and settings, ``head_mix_k``/``head_one_k`` their momentum copies on f_k;
    ``heads: shared``: the model's classifier (and its copy on f_k) serves every loss.
    """

    family = "input"
    needs = ("images", "train", "epochs", "class_labels", "stages")
    tasks = ("classification",)
    #: the method's name in messages
    label = "automix"

    # ------------------------------------------------------------------------------ what subclasses give
    def make_block(self, channels: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_state(self) -> dict:
        """More of the subclass's state for :meth:`state_dict` (e.g. a step counter)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------------------ checks and setup
    def _position(self, model: Model) -> int:
        top = model.num_stages
        pos = self.position if self.position is not None else max(1, top - 1)
        if pos > top:
            raise PluginError(f"{self.label}: mask_position {pos} is beyond this model's {top} stages")
        return pos

    def check_model(self, model: Model, input_shape: tuple[int, ...]) -> None:
        """The generator needs a spatial (C, H, W) feature map at ``mask_position`` (one forward pass of one
        example; on the meta device at validation time, shapes only)."""
        pos = self._position(model)
        device = next(iter(model.parameters()), torch.zeros(())).device
        x = torch.zeros(1, *input_shape, device=device, dtype=param_dtype(model))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                shape = tuple(model.forward_to(x, pos).shape[1:])
        finally:
            model.train(was)
        if len(shape) != 3:
            raise PluginError(f"{self.label} needs a spatial feature map (C, H, W) at position {pos}; model "
                              f"'{type(model).__name__}' gives {shape} there (use a convolutional model such as cnn "
                              "or resnet18)")
        if self.heads == "reference" and not isinstance(model.classifier, nn.Linear):
            raise PluginError(f"{self.label} heads: reference needs a linear classifier, model "
                              f"'{type(model).__name__}' has a {type(model.classifier).__name__}")

    def setup(self, ctx: Context) -> None:
        check_images(ctx, self.label)
        model = ctx.model
        self.pos = self._position(model)
        self.k = copy.deepcopy(model)
        for p in self.k.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            h = self.k.forward_to(probe_input(ctx, model), self.pos)  # in the model's dtype (e.g. bf16)
        if h.dim() != 4:
            raise PluginError(f"{self.label} needs a spatial feature map at position {self.pos}, the model gives "
                              f"{tuple(h.shape[1:])}")
        self.block = self.make_block(h.shape[1]).to(ctx.device, dtype=h.dtype)
        self.opts = {}
        for p in self.block.parameters():
            self.opts[p] = torch.optim.SGD([p], lr=self.lr, momentum=0.9, weight_decay=1e-4)
            p.register_post_accumulate_grad_hook(self._step_param)
        self.epochs = ctx.epochs
        self.ctx_train_len = len(ctx.train)
        self.head_mix_q = self.head_mix_k = self.head_opt = None
        if self.heads == "reference":
            run_opt = ctx.extra.get("optimizer")
            if run_opt is None:
                raise PluginError(f"{self.label} heads: reference needs the run's optimizer (ctx.extra['optimizer'], "
                                  "set by the engine); use heads: shared without it")
            cls_head = model.classifier
            if not isinstance(cls_head, nn.Linear):
                raise PluginError(f"{self.label} heads: reference needs a linear classifier, got "
                                  f"{type(cls_head).__name__}")
            self.run_opt = run_opt
            self.head_mix_q = nn.Linear(cls_head.in_features, cls_head.out_features).to(
                ctx.device, dtype=cls_head.weight.dtype)  # (a bf16 model gets a bf16 head)
            nn.init.normal_(self.head_mix_q.weight, std=0.01)  # OpenMixup ClsHead.init_weights
            nn.init.zeros_(self.head_mix_q.bias)
            self.head_mix_k = copy.deepcopy(self.head_mix_q)
            for p in self.head_mix_k.parameters():
                p.requires_grad_(False)
            self.head_opt = copy_optimizer(run_opt, self.head_mix_q.parameters())
            self._head_pending = 0
            for p in self.head_mix_q.parameters():
                p.register_post_accumulate_grad_hook(self._step_head)
        # the evaluator automix_heads finds the heads here (a plain attribute: not in the model's state)
        object.__setattr__(model, "automix_heads", self.head_logits)

    def _step_head(self, p: torch.Tensor) -> None:
        """Step head_mix_q once both its parameters have their gradients, at the run's classifier lr."""
        self._head_pending += 1
        if self._head_pending < 2:
            return
        self._head_pending = 0
        lr = self.run_opt.param_groups[-1]["lr"]
        for g in self.head_opt.param_groups:
            g["lr"] = lr
        self.head_opt.step()
        self.head_opt.zero_grad(set_to_none=True)

    def _step_param(self, p: torch.Tensor) -> None:
        opt = self.opts[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def head_logits(self, model: Model, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The test-time logits of the reference's four heads (``simple_test``) for inputs ``x``."""
        pos = model.embed_position
        was = self.k.training
        self.k.eval()  # test mode for the momentum encoder too (its BatchNorm statistics stay as they are)
        try:
            gq, gk = model.forward_to(x, pos), self.k.forward_to(x, pos)
        finally:
            self.k.train(was)
        out = {"one_q": model.classifier(gq), "one_k": self.k.classifier(gk)}
        if self.heads == "reference":
            out.update(mix_q=self.head_mix_q(gq), mix_k=self.head_mix_k(gk))
        else:  # one classifier: the mixed heads are the clean ones
            out.update(mix_q=out["one_q"], mix_k=out["one_k"])
        return out

    def start_epoch(self, epoch: int, ctx: Context) -> None:
        lr = self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * (epoch - 1) / ctx.epochs)) / 2
        for opt in self.opts.values():
            for g in opt.param_groups:
                g["lr"] = lr

    def state_dict(self) -> dict:
        out = {"k": self.k.state_dict(), "block": self.block.state_dict(),
               "opts": [opt.state_dict() for opt in self.opts.values()]}
        if self.head_mix_q is not None:
            out.update(head_mix_q=self.head_mix_q.state_dict(), head_mix_k=self.head_mix_k.state_dict(),
                       head_opt=self.head_opt.state_dict())
        out.update(self.extra_state())
        return out

    def load_state_dict(self, state: dict) -> None:
        self.k.load_state_dict(state["k"])
        self.block.load_state_dict(state["block"])
        for opt, sd in zip(self.opts.values(), state["opts"]):
            opt.load_state_dict(sd)
        if self.head_mix_q is not None:
            self.head_mix_q.load_state_dict(state["head_mix_q"])
            self.head_mix_k.load_state_dict(state["head_mix_k"])
            self.head_opt.load_state_dict(state["head_opt"])
        self.load_extra_state(state)

    # ------------------------------------------------------------------------------ pieces of a step
    @torch.no_grad()
    def momentum_update(self, model: Model, mu: float) -> None:
        """``f_k <- mu f_k + (1 - mu) f_q`` over the parameters (buffers are f_k's own, as the reference), and
        ``head_mix_k`` from ``head_mix_q`` with it."""
        ema_(self.k.parameters(), model.parameters(), mu)
        if self.head_mix_k is not None:
            ema_(self.head_mix_k.parameters(), self.head_mix_q.parameters(), mu)

    def begin_step(self, model: Model, ctx: Context, n: int) -> None:
        """The reference's momentum update after the previous step (with that step's momentum), and f_k in the
        model's train/eval mode."""
        total = max(1, ctx.epochs * max(1, self.ctx_train_len // n))
        if ctx.step > 0:
            self.momentum_update(model, momentum_at(ctx.step - 1, total, self.base_m, self.end_m))
        self.k.train(model.training)
        self.block.train(model.training)

    @torch.no_grad()
    def features(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        """f_k's features at ``mask_position`` for the generator (no grad). ``full``: run the rest of f_k too, as
        the references' ``backbone_k(img)`` does (in train mode this updates the later stages' BatchNorm
        statistics with the clean batch; the result is the same)."""
        h = self.k.forward_to(x, self.pos)
        if full:
            self.k.forward_from(h, self.pos)
        return h

    def k_logits(self, x: torch.Tensor) -> torch.Tensor:
        """f_k's mixed-head logits (``head_mix_k``; the classifier copy with ``heads: shared``)."""
        if self.heads == "reference":
            return self.head_mix_k(self.k.forward_to(x, self.k.embed_position))
        return self.k(x)

    def q_logits(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        """The model's mixed-head logits (``head_mix_q``; the classifier with ``heads: shared``)."""
        if self.heads == "reference":
            return self.head_mix_q(model.forward_to(x, model.embed_position))
        return model(x)

    def check_common(self, alpha, mask_position, lam_margin, momentum, end_momentum, mixblock_lr, mixblock_min_lr,
                     upsampling, label_smoothing, heads, lam_margin_max: float = 0.5) -> None:
        """Check and store the options every learned mixer has (one PluginError line each)."""
        if heads not in HEADS:
            raise PluginError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
        check_range("alpha", alpha, 0, low_open=True)
        if mask_position is not None and not (isinstance(mask_position, int) and not isinstance(mask_position, bool)
                                              and mask_position >= 1):
            raise PluginError(f"mask_position must be a stage position >= 1 or null, got {mask_position}")
        check_range("lam_margin", lam_margin, 0, lam_margin_max)
        check_range("momentum", momentum, 0, 1)
        check_range("end_momentum", end_momentum, momentum, 1)
        check_range("mixblock_lr", mixblock_lr, 0)
        check_range("mixblock_min_lr", mixblock_min_lr, 0, mixblock_lr)
        if upsampling not in UPSAMPLING:
            raise PluginError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.heads, self.alpha, self.position, self.lam_margin = heads, alpha, mask_position, lam_margin
        self.base_m, self.end_m, self.lr, self.min_lr = momentum, end_momentum, mixblock_lr, mixblock_min_lr
        self.up, self.smoothing = upsampling, label_smoothing
