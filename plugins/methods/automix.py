"""AutoMix (Liu, Li, Wang, Tan, Li, ECCV 2022): a learned MixBlock generates the mixing masks."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, lam_tensor, permutation,
                        soft_cross_entropy, soft_targets)
from mixcli.mixing.boxes import check_images
from mixcli.mixing.inputs import probe_input

UPSAMPLING = ("nearest", "bilinear", "bicubic")
HEADS = ("reference", "shared")


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
        v = self.value(hj).reshape(n, 1, -1).transpose(1, 2).float()              # (B, HW, 1)
        q = self.query(hi).reshape(n, self.inter, -1).transpose(1, 2).float()     # (B, HW, C')
        k = self.query(hj).reshape(n, self.inter, -1).float()                     # (B, C', HW)
        with torch.autocast(h.device.type, enabled=False):  # float32 attention, as the reference forces
            p = q @ k
            if self.use_scale:
                p = p / self.inter ** 0.5
            m = (p.softmax(-1) @ v).reshape(n, 1, fh, fw)
            return torch.sigmoid(F.interpolate(m, size=size, mode=mode))


def momentum_at(step: int, total: int, base: float, end: float, start_frac: float = 0.1) -> float:
    """OpenMixup's ``CosineScheduleHook`` (constant warm-up): ``base`` before ``start_frac * total`` steps,
    then ``end - (end - base) (cos(pi step / total) + 1) / 2``."""
    if step < int(total * start_frac):
        return base
    return end - (end - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


class AutoMix(Method):
    """AutoMix: masks from a MixBlock trained jointly through a momentum encoder; the classifier learns on them.

    Liu, Li, Wang, Tan, Li, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022; the
    reference is OpenMixup's ``AutoMixup`` with its CIFAR-100 ResNet-18 config
    (``automix/basic/r18_l2_a2_near_L1_01_mlr5e_2.py``). Per step, with f_q the model and f_k its momentum copy:

        lam_m, lam_q ~ Beta(alpha, alpha);  perm_q, perm_m random;  h = f_k up to ``mask_position`` (no grad)
        M_m = MixBlock(h, lam_m, perm_m);  M_q = MixBlock(h, lam_q, perm_q), detached; M_q = 1 - lam_q
              everywhere when lam_q or 1 - lam_q <= lam_margin (plain mixup)
        x~_m = (1 - M_m) x + M_m x[perm_m],  x~_q likewise with M_q
        L = CE_mix(f_q(x~_q); lam_q) + CE(f_q(x), y)                              (trains f_q)
          + CE_mix(f_k(x~_m); lam_m) + w max(|1 - mean(M_m) - lam_m| - margin, 0)  (trains the MixBlock only)
        after each step: f_k <- mu f_k + (1 - mu) f_q  (parameters), mu: 0.999 -> 0.999999 by a cosine
        over the run, constant for its first 10% (OpenMixup's CosineScheduleHook)

    ``CE_mix(z; lam) = lam CE(z, y) + (1 - lam) CE(z, y[perm])``. The MixBlock has its own SGD (``mixblock_lr``
    0.1, momentum 0.9, weight decay 1e-4, cosine per epoch to ``mixblock_min_lr`` 0.05: the reference's
    optimizer and schedule), stepped as soon as its gradients are accumulated in the backward pass. Its
    weights, optimizer state and the momentum encoder are in the method's ``state_dict`` (saved in every
    checkpoint), so a resumed run continues exactly. Defaults: ``alpha`` 2, ``mask_position`` (null: the
    stage before the last, ResNet-18's stage 3 as the reference's ``mask_layer=2``), ``mask_loss`` 0.1,
    ``mask_margin`` 0.1, ``lam_margin`` 0.08, ``momentum`` 0.999, ``end_momentum`` 0.999999, ``upsampling``
    nearest, ``lam_concat`` false, ``reduction`` 2. The method sets its own loss.

    Heads. ``heads: reference`` (default) has the reference's four linear heads (OpenMixup ``AutoMixup``,
    ``head_weights`` ``head_mix_q``, ``head_one_q``, ``head_mix_k``, ``head_one_k``): ``head_one_q`` is the
    model's classifier (the clean CE), ``head_mix_q`` a second linear head on f_q's pooled features that
    takes the mixed CE of x~_q, and ``head_mix_k`` / ``head_one_k`` their momentum copies on f_k (updated
    with the encoder, ``f_k`` includes ``head_one_k``); the MixBlock's loss ``CE_mix(f_k(x~_m))`` goes
    through ``head_mix_k``::

        L = CE_mix(head_mix_q(g_q(x~_q)); lam_q) + CE(head_one_q(g_q(x)), y)
          + CE_mix(head_mix_k(g_k(x~_m)); lam_m) + w max(|1 - mean(M_m) - lam_m| - margin, 0)

    ``head_mix_q`` starts as OpenMixup's ``ClsHead`` (weights ~ N(0, 0.01), bias 0) and is trained with the
    run's optimizer settings: an optimizer of the run's class and defaults, stepped in the backward pass at
    the learning rate of the run's classifier group (read from the engine's optimizer at each step), as
    the reference trains it with the rest of the network. The reference reports the test accuracy of each
    head (``simple_test``: ``acc_mix_k``, ``acc_one_k``, ``acc_mix_q``, ``acc_one_q``); the evaluator
    ``automix_heads`` reports them as ``automix_{mix_k,one_k,mix_q,one_q}_accuracy``. The run's own metrics
    (``accuracy`` etc.) are ``head_one_q``'s: the model's classifier. ``heads: shared`` is mixcli's earlier
    variant: the model's one classifier serves both q losses and the momentum copy of it the MixBlock's.
    """

    family = "input"
    paper = "Liu et al., AutoMix: Unveiling the Power of Mixup for Stronger Classifiers, ECCV 2022"
    needs = ("images", "train", "epochs", "class_labels", "stages")
    tasks = ("classification",)

    def __init__(self, alpha: float = 2.0, mask_position: int | None = None, mask_loss: float = 0.1,
                 mask_margin: float = 0.1, lam_margin: float = 0.08, momentum: float = 0.999,
                 end_momentum: float = 0.999999, mixblock_lr: float = 0.1, mixblock_min_lr: float = 0.05,
                 upsampling: str = "nearest", lam_concat: bool = False, reduction: int = 2,
                 label_smoothing: float = 0.0, heads: str = "reference"):
        if heads not in HEADS:
            raise PluginError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
        self.heads = heads
        check_range("alpha", alpha, 0, low_open=True)
        if mask_position is not None and not (isinstance(mask_position, int) and mask_position >= 1):
            raise PluginError(f"mask_position must be a stage position >= 1 or null, got {mask_position}")
        check_range("mask_loss", mask_loss, 0)
        check_range("mask_margin", mask_margin, 0, 1)
        check_range("lam_margin", lam_margin, 0, 0.5)
        check_range("momentum", momentum, 0, 1)
        check_range("end_momentum", end_momentum, momentum, 1)
        check_range("mixblock_lr", mixblock_lr, 0)
        check_range("mixblock_min_lr", mixblock_min_lr, 0, mixblock_lr)
        if upsampling not in UPSAMPLING:
            raise PluginError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}")
        if not (isinstance(reduction, int) and reduction >= 1):
            raise PluginError(f"reduction must be an integer >= 1, got {reduction}")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.alpha, self.position, self.mask_w, self.mask_margin = alpha, mask_position, mask_loss, mask_margin
        self.lam_margin, self.base_m, self.end_m = lam_margin, momentum, end_momentum
        self.lr, self.min_lr, self.up, self.lam_concat = mixblock_lr, mixblock_min_lr, upsampling, lam_concat
        self.reduction, self.smoothing = reduction, label_smoothing

    # ------------------------------------------------------------------------------ setup and state
    def setup(self, ctx: Context) -> None:
        check_images(ctx, "automix")
        model = ctx.model
        top = model.num_stages
        pos = self.position if self.position is not None else max(1, top - 1)
        if pos > top:
            raise PluginError(f"mask_position {pos} is beyond this model's {top} stages")
        self.pos = pos
        self.k = copy.deepcopy(model)
        for p in self.k.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            h = self.k.forward_to(probe_input(ctx, model), pos)  # in the model's dtype (e.g. bf16)
        if h.dim() != 4:
            raise PluginError(f"automix needs a spatial feature map at position {pos}, the model gives "
                              f"{tuple(h.shape[1:])}")
        self.block = MixBlock(h.shape[1], self.reduction, self.lam_concat).to(ctx.device, dtype=h.dtype)
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
                raise PluginError("automix heads: reference needs the run's optimizer (ctx.extra['optimizer'], "
                                  "set by the engine); use heads: shared without it")
            cls_head = model.classifier
            if not isinstance(cls_head, nn.Linear):
                raise PluginError(f"automix heads: reference needs a linear classifier, got "
                                  f"{type(cls_head).__name__}")
            self.run_opt = run_opt
            self.head_mix_q = nn.Linear(cls_head.in_features, cls_head.out_features).to(
                ctx.device, dtype=cls_head.weight.dtype)  # (a bf16 model gets a bf16 head)
            nn.init.normal_(self.head_mix_q.weight, std=0.01)  # OpenMixup ClsHead.init_weights
            nn.init.zeros_(self.head_mix_q.bias)
            self.head_mix_k = copy.deepcopy(self.head_mix_q)
            for p in self.head_mix_k.parameters():
                p.requires_grad_(False)
            self.head_opt = type(run_opt)(self.head_mix_q.parameters(), **run_opt.defaults)
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

    def _step_param(self, p: torch.Tensor) -> None:
        opt = self.opts[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

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

    # ------------------------------------------------------------------------------ one step
    @torch.no_grad()
    def momentum_update(self, model: Model, mu: float) -> None:
        """``f_k <- mu f_k + (1 - mu) f_q`` over the parameters (buffers are f_k's own, as the reference)."""
        pk = list(self.k.parameters())
        torch._foreach_mul_(pk, mu)
        torch._foreach_add_(pk, [p.detach() for p in model.parameters()], alpha=1 - mu)
        if self.head_mix_k is not None:  # the reference updates head_mix_k from head_mix_q with the encoder
            hk = list(self.head_mix_k.parameters())
            torch._foreach_mul_(hk, mu)
            torch._foreach_add_(hk, [p.detach() for p in self.head_mix_q.parameters()], alpha=1 - mu)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        total = max(1, ctx.epochs * max(1, self.ctx_train_len // n))
        if ctx.step > 0:  # the reference's update after the previous step, with that step's momentum
            self.momentum_update(model, momentum_at(ctx.step - 1, total, self.base_m, self.end_m))
        lam_m, lam_q = (float(v) for v in ctx.rng.beta(self.alpha, self.alpha, 2))
        perm_q, perm_m = permutation(ctx, n), permutation(ctx, n)
        self.k.train(model.training)
        size = x.shape[-2:]
        with torch.no_grad():
            h = self.k.forward_to(x, self.pos)
        m_m = self.block(h, lam_m, perm_m, size, self.up)
        if self.lam_margin >= lam_q or self.lam_margin >= 1 - lam_q:
            m_q = torch.full_like(m_m, 1 - lam_q).detach()
        else:
            with torch.no_grad():
                m_q = self.block(h, lam_q, perm_q, size, self.up)
        x_m = torch.lerp(x, x[perm_m], m_m.to(x.dtype))
        x_q = torch.lerp(x, x[perm_q], m_q.to(x.dtype))
        if self.heads == "reference":
            pos = model.embed_position
            k_logits = self.head_mix_k(self.k.forward_to(x_m, pos))
            q_logits = self.head_mix_q(model.forward_to(x_q, pos))
        else:
            k_logits, q_logits = self.k(x_m), model(x_q)
        k_out = MixOutput(k_logits, y, y[perm_m], lam_tensor(lam_m, n, x.device), self.smoothing)
        q_out = MixOutput(q_logits, y, y[perm_q], lam_tensor(lam_q, n, x.device), self.smoothing)
        one = MixOutput.unmixed(model(x), y, self.smoothing)
        kk = ctx.num_classes
        mask_loss = (1 - m_m.mean() - lam_m).abs().sub(self.mask_margin).clamp_min(0)
        loss = (soft_cross_entropy(q_out.logits, soft_targets(q_out, kk))
                + soft_cross_entropy(one.logits, soft_targets(one, kk))
                + soft_cross_entropy(k_out.logits, soft_targets(k_out, kk))
                + self.mask_w * mask_loss)
        q_out.loss = loss
        q_out.info = {"mask_mean": m_m.detach().mean(), "mask_loss": mask_loss.detach()}
        return q_out
