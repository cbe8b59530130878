"""SMMix (Chen, Lin, Lin, Zhang, Chao, Ji, ICCV 2023): self-motivated image mixing for vision transformers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixcli.api import (Batch, Context, Method, MixOutput, Model, PluginError, check_range, interpolate,
                        lam_tensor, to_device)
from mixcli.mixing.learned import copy_optimizer
from mixcli.mixing.tokens import hook_grid, meta_grid, smooth_one_hot, soft_ce_rows

HEADS = ("separate", "shared")
HOOKS = ("patch_attention", "patch_tokens")


def region_tokens(center: torch.Tensor, side: int, grid: int) -> torch.Tensor:
    """Token indices (B, side^2, raster order) of the side x side squares at the unfold positions ``center``
    (B,) of a grid x grid token map (the reference's ``index_translate``)."""
    per_row = grid - side + 1
    top, left = center // per_row, center % per_row
    d = torch.arange(side, device=center.device)
    rows = (top[:, None] + d)[:, :, None]
    cols = (left[:, None] + d)[:, None, :]
    return (rows * grid + cols).reshape(center.shape[0], -1)


def smmix_regions(attn: torch.Tensor, side: int, perm: torch.Tensor):
    """Where SMMix cuts and pastes: for attention (B, g, g) and a square of ``side`` tokens,

        score(r) = the attention summed over the square at unfold position r (stride 1)
        row i receives the square of its partner perm(i) with the highest score at its own lowest-scoring
        square (the first minimum / maximum, as ``torch.argmin`` / ``argmax``)

    Returns ``(dest, src)``: token indices (B, side^2) in row i and in row perm(i)."""
    g = attn.shape[-1]
    score = F.unfold(attn.float()[:, None], side, stride=1).sum(1)  # (B, L)
    dest = region_tokens(score.argmin(1), side, g)
    src = region_tokens(score.argmax(1), side, g)[perm]
    return dest, src


def smmix_images(x: torch.Tensor, perm: torch.Tensor, dest: torch.Tensor, src: torch.Tensor, grid: int):
    """The mixed images: row i's patches at ``dest[i]`` replaced by row perm(i)'s patches at ``src[i]`` (patch
    by patch, raster order), and the source mask (B, N) (True: the patch came from the partner)."""
    b, c, h, w = x.shape
    p = h // grid
    patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, C p p)
    src_patches = torch.gather(patches[perm], 1, src[..., None].expand(-1, -1, patches.shape[-1]))
    mixed = patches.scatter(1, dest[..., None].expand(-1, -1, patches.shape[-1]), src_patches)
    source = torch.zeros(b, grid * grid, dtype=torch.bool, device=x.device).scatter_(1, dest, True)
    return F.fold(mixed.transpose(1, 2), (h, w), p, stride=p), source


def region_logits(tokens: torch.Tensor, mask: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """``head`` applied to the mean of the patch tokens (B, N, D) where ``mask`` (B, N) is True."""
    m = mask.to(tokens.dtype)[..., None]
    return head((tokens * m).sum(1) / m.sum(1))


def smmix_loss(logits, target_logits, source_logits, teacher_logits, y_a, y_b, lam: float, smoothing: float):
    """SMMix's objective (the reference's ``engine.train_one_epoch``), with t(.) the smoothed one-hot:

        L_cls  = SCE(z, lam t(y_a) + (1 - lam) t(y_b))
        L_fine = (SCE(z_target, t(y_a)) + SCE(z_source, t(y_b))) / 2   (z_target / z_source: the token head on the
                 mean of the image's own / the pasted tokens)
        L_con  = KL(softmax(lam z0 + (1 - lam) z0[perm]) || softmax(z))   (z0: the clean batch's logits,
                 no gradient; ``KLDivLoss(reduction='batchmean')``)
        L = L_cls + L_fine + L_con"""
    k = logits.shape[-1]
    ta, tb = smooth_one_hot(y_a, k, smoothing), smooth_one_hot(y_b, k, smoothing)
    cls = soft_ce_rows(logits, lam * ta + (1 - lam) * tb).mean()
    fine = 0.5 * (soft_ce_rows(target_logits, ta).mean() + soft_ce_rows(source_logits, tb).mean())
    con = F.kl_div(F.log_softmax(logits.float(), dim=1), F.softmax(teacher_logits.float(), dim=1),
                   reduction="batchmean")
    return cls + fine + con, (cls, fine, con)


class SMMix(Method):
    """SMMix: the model's own attention picks the regions; fine-grained token labels and a self-motivated loss.

    Chen, Lin, Lin, Zhang, Chao, Ji, "SMMix: Self-Motivated Image Mixing for Vision Transformers", ICCV 2023;
    defaults of the reference (ChenMnZ/SMMix ``smmix.py``, ``engine.py``, ``deit.py``, ``main.py``).

        each batch: SMMix with probability switch_prob, else mixup (lam ~ Beta(alpha, alpha), the smoothed
                    mixed label, the loss plugin's loss)
        SMMix: z0, A = logits and patch attention of the clean batch (model in eval mode, no gradient;
               A: the last block's attention to each patch, mean over heads and query patches,
               :meth:`mixcli.api.Model.patch_attention`); a square side s drawn uniformly from
               int(g min_side_ratio) .. int(g max_side_ratio) tokens of the g x g grid;
               row i gets its partner's most-attended s x s square pasted over its own least-attended one
               (:func:`smmix_regions`, :func:`smmix_images`); lam = 1 - s^2 / g^2 (the row's own share)
               z, T = logits and patch tokens of the mixed batch (:meth:`mixcli.api.Model.patch_tokens`)
               loss = :func:`smmix_loss` (mixed CE + fine-grained token-head CE + KL to the mixed z0)

    ``token_head: separate`` (default, the reference's ``token_head``): a second linear classifier on the
    tokens, initialised as the reference (truncated normal, std 0.02, zero bias) and trained by its own copy
    of the run's optimizer at the run's learning rate; it is kept, with that optimizer, in the method's state
    (a resumed run continues exactly). ``token_head: shared``: the model's own classifier (the reference's
    comment: sharing or not "does not affect performance"). Options: ``switch_prob`` (0.5), ``alpha`` (0.8),
    ``min_side_ratio`` (0.25), ``max_side_ratio`` (0.75), ``label_smoothing`` (0.1). Partners come from a
    random permutation (the reference flips the batch). Needs a square patch grid of at least 2 x 2 and a ViT
    (``model: {name: timm, arch: vit_..., img_size, patch_size}``).
    """

    family = "input"
    paper = "Chen et al., SMMix: Self-Motivated Image Mixing for Vision Transformers, ICCV 2023"
    needs = ("images", "patch_attention", "patch_tokens")
    tasks = ("classification",)

    def __init__(self, switch_prob: float = 0.5, alpha: float = 0.8, min_side_ratio: float = 0.25,
                 max_side_ratio: float = 0.75, label_smoothing: float = 0.1, token_head: str = "separate"):
        check_range("switch_prob", switch_prob, 0, 1)
        check_range("alpha", alpha, 0, low_open=True)
        check_range("min_side_ratio", min_side_ratio, 0, 1, low_open=True)
        check_range("max_side_ratio", max_side_ratio, 0, 1, low_open=True)
        if min_side_ratio > max_side_ratio:
            raise PluginError(f"min_side_ratio ({min_side_ratio}) must be <= max_side_ratio ({max_side_ratio})")
        check_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
        if token_head not in HEADS:
            raise PluginError(f"token_head must be one of {', '.join(HEADS)}, got {token_head!r}")
        self.switch_prob, self.alpha, self.smoothing, self.token_head = switch_prob, alpha, label_smoothing, token_head
        self.ratios = (min_side_ratio, max_side_ratio)
        self.sides = None
        self.head = self.head_opt = self.run_opt = None

    def side_choices(self, grid) -> list[int]:
        """The square sides the reference draws from (``rectangle_size_list``), for a g x g grid."""
        gh, gw = grid
        if gh != gw:
            raise PluginError(f"smmix needs a square patch grid, the model gives {gh}x{gw}")
        lo, hi = int(gh * self.ratios[0]), int(gh * self.ratios[1])
        if lo < 1 or hi >= gh:
            raise PluginError(f"smmix: side ratios {self.ratios[0]}..{self.ratios[1]} of this {gh}x{gh} patch "
                              f"grid give squares of {lo}..{hi} tokens; they must be 1..{gh - 1} (use a finer "
                              "patch grid or other ratios)")
        return list(range(lo, hi + 1))

    def check_model(self, model: Model, input_shape) -> None:
        if len(input_shape) == 3:
            self.side_choices(meta_grid(model, input_shape, HOOKS))

    def setup(self, ctx: Context) -> None:
        if ctx.train.x.dim() != 4:
            raise PluginError(f"smmix needs image inputs (N, C, H, W); this dataset has inputs of shape "
                              f"{tuple(ctx.train.x.shape[1:])}")
        model = ctx.model
        self.grid = hook_grid(ctx, model, HOOKS)
        self.sides = self.side_choices(self.grid)
        if self.token_head == "separate":
            cls = model.classifier
            if not isinstance(cls, nn.Linear):
                raise PluginError(f"smmix token_head: separate needs a linear classifier, got {type(cls).__name__}")
            run_opt = ctx.extra.get("optimizer")
            if run_opt is None:
                raise PluginError("smmix token_head: separate needs the run's optimizer (ctx.extra['optimizer'], "
                                  "set by the engine and by Mixer with an optimizer); use token_head: shared")
            self.head = nn.Linear(cls.in_features, cls.out_features).to(ctx.device, dtype=cls.weight.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
            self.run_opt = run_opt
            self.head_opt = copy_optimizer(run_opt, self.head.parameters())
            self._pending = 0
            for p in self.head.parameters():
                p.register_post_accumulate_grad_hook(self._step_head)

    def _step_head(self, _p: torch.Tensor) -> None:
        """One step of the token head once both its parameters have gradients, at the run's current lr."""
        self._pending += 1
        if self._pending < 2:
            return
        self._pending = 0
        lr = self.run_opt.param_groups[-1]["lr"]
        for g in self.head_opt.param_groups:
            g["lr"] = lr
        self.head_opt.step()
        self.head_opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "head_opt": self.head_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.head is not None and state:
            self.head.load_state_dict(state["head"])
            self.head_opt.load_state_dict(state["head_opt"])

    @torch.no_grad()
    def motivation(self, model: Model, x: torch.Tensor):
        """(z0, A): the clean batch's logits and patch attention, the model in eval mode (the reference's
        ``motivat_model.eval()``), no gradient."""
        was = model.training
        model.eval()
        try:
            return model.patch_attention(x)
        finally:
            model.train(was)

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        x, y, n = batch.x, batch.y, batch.x.shape[0]
        perm = to_device(ctx.rng.permutation(n), x.device)
        ctx.extra["partners"] = perm  # this step's partners, for losses that read them (sumix)
        if not ctx.rng.random() < self.switch_prob:
            lam = float(ctx.rng.beta(self.alpha, self.alpha))
            lam_t = lam_tensor(lam, n, x.device)
            return MixOutput(model(x if lam == 1 else interpolate(x, perm, lam_t)), y, y[perm], lam_t,
                             self.smoothing)
        if self.sides is None:
            self.grid = hook_grid(ctx, model, HOOKS)
            self.sides = self.side_choices(self.grid)
        g = self.grid[0]
        side = self.sides[int(ctx.rng.integers(len(self.sides)))]
        lam = (g * g - side * side) / (g * g)
        z0, attn = self.motivation(model, x)
        dest, src = smmix_regions(attn, side, perm)
        xm, source = smmix_images(x, perm, dest, src, g)
        logits, tokens = model.patch_tokens(xm)
        tokens = tokens.reshape(n, g * g, -1)
        head = self.head if self.head is not None else model.classifier
        zt, zs = region_logits(tokens, ~source, head), region_logits(tokens, source, head)
        teacher = lam * z0.float() + (1 - lam) * z0.float()[perm]
        loss, (cls, fine, con) = smmix_loss(logits, zt, zs, teacher, y, y[perm], lam, self.smoothing)
        return MixOutput(logits, y, y[perm], lam_tensor(lam, n, x.device), self.smoothing, loss=loss,
                         info={"smmix_fine": fine.detach(), "smmix_con": con.detach()})
