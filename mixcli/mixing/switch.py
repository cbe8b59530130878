"""timm's mixup / CutMix switch as a reusable draw: which rows mix, how, with which partner and lambda.

Shared by the ``mixup`` and ``transmix`` method plugins (and usable from a user's own loop). It draws on
the host from a seeded ``numpy`` generator and touches no tensor; the methods apply what it draws.
"""
from __future__ import annotations

import numpy as np

from ..api import Context, PluginError, check_range
from .boxes import check_images, check_minmax, cutmix_draw

LAM_MODES = ("batch", "pair", "elem")

__all__ = ["LAM_MODES", "MixCutSwitch"]


class MixCutSwitch:
    """The per-batch draw of timm's ``Mixup`` (``_params_per_batch`` / ``_params_per_elem`` and the pair
    mode): partners, lambda and the mixup-or-CutMix choice of each unit (the batch, a pair or an element).

    Options as ``mixup`` (see its docstring): ``alpha``, ``prob``, ``mode``, ``cutmix_alpha``, ``switch_prob``,
    ``cutmix_minmax``, ``correct_lam``; checked here, one :class:`PluginError` line each.
    """

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, mode: str = "batch", cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5, cutmix_minmax: list | None = None, correct_lam: bool = True):
        check_range("alpha", alpha, 0)
        check_range("prob", prob, 0, 1)
        if mode not in LAM_MODES:
            raise PluginError(f"mode must be one of {', '.join(LAM_MODES)}, got {mode!r}")
        if cutmix_alpha < 0:
            raise PluginError(f"cutmix_alpha must be >= 0 (0 = no CutMix), got {cutmix_alpha}")
        check_range("switch_prob", switch_prob, 0, 1)
        if cutmix_minmax is not None and cutmix_alpha <= 0:
            raise PluginError("cutmix_minmax is set but CutMix is off; set cutmix_alpha > 0 to use it")
        self.alpha, self.prob, self.mode = alpha, prob, mode
        self.cutmix_alpha, self.switch_prob = cutmix_alpha, switch_prob
        self.minmax, self.correct = check_minmax(cutmix_minmax, "cutmix_minmax"), correct_lam

    def check_inputs(self, ctx: Context, method: str) -> None:
        """CutMix needs images: one line naming ``method`` otherwise."""
        if self.cutmix_alpha > 0:
            check_images(ctx, method)

    def params(self, rng: np.random.Generator, units: int):
        """(lam, use_cutmix) for ``units`` batches / pairs / elements (timm's ``_params_per_*``): arrays of
        ``units``; lam = 1 where a unit is not mixed (probability 1 - prob)."""
        a, ca = self.alpha, self.cutmix_alpha
        mixed = rng.random(units) < self.prob if self.prob < 1 else np.ones(units, dtype=bool)
        if a > 0 and ca > 0:
            cut = rng.random(units) < self.switch_prob
        else:
            cut = np.full(units, ca > 0)
        lam = np.ones(units)
        if (~cut).any() and a > 0:
            lam[~cut] = rng.beta(a, a, int((~cut).sum()))
        if cut.any():
            lam[cut] = rng.beta(ca, ca, int(cut.sum()))
        lam = np.where(mixed, lam, 1.0)
        return lam, cut & mixed

    def draw(self, ctx: Context, n: int, h: int = 0, w: int = 0):
        """(perm, lam, cut, box) for a batch of ``n`` images of ``h`` x ``w``, all on the host: the partner
        permutation; the label weight of each row (the box area for CutMix rows when corrected); whether a
        row uses CutMix; its box as four arrays (y1, y2, x1, x2) of ``n`` (empty boxes for the other rows).
        Rows of one batch (``batch`` mode) or one pair share lambda, the mixup/CutMix choice and the box."""
        rng = ctx.rng
        if self.mode == "pair":
            order = rng.permutation(n)
            a, b = order[0:n - 1:2], order[1:n:2]
            perm = np.arange(n)
            perm[a], perm[b] = b, a
            units = len(a)
            unit = np.full(n, units)  # an odd row out points at the extra, unmixed unit
            unit[a] = unit[b] = np.arange(units)
        else:
            perm = rng.permutation(n)
            units = 1 if self.mode == "batch" else n
            unit = np.zeros(n, dtype=np.int64) if self.mode == "batch" else np.arange(n)
        lam, cut = self.params(rng, units)
        box = [np.zeros(units, dtype=np.int64) for _ in range(4)]
        if cut.any():
            drawn, lam[cut] = cutmix_draw(rng, lam[cut], h, w, self.minmax, self.correct)
            for full, part in zip(box, drawn):
                full[cut] = part
        lam, cut = np.append(lam, 1.0)[unit], np.append(cut, False)[unit]
        ctx.extra["partners"] = perm  # this step's partners (mixcli.api.begin_step)
        return perm, lam, cut, tuple(np.append(b, 0)[unit] for b in box)
