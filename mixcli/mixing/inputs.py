"""Inputs for the methods' set-up probes, and the checks of a batch handed to a method from a user's loop."""
from __future__ import annotations

import torch
from torch import nn

from ..api import Context, PluginError

__all__ = ["param_dtype", "probe_input", "check_batch"]


def param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 when it has none): the dtype a probe
    input must have (a bf16 model refuses float32 inputs outside autocast)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32


def probe_input(ctx: Context, model: nn.Module, n: int = 2) -> torch.Tensor:
    """``n`` training inputs as floats on the device, in the model's parameter dtype: what a method's
    ``setup`` runs through the model once to check it (shapes and hooks; the values do not matter)."""
    return ctx.train.x[:n].to(ctx.device, dtype=param_dtype(model))


def check_batch(x: torch.Tensor, y: torch.Tensor, task: str, num_classes: int | None, who: str = "batch",
                class_ids: bool = False) -> None:
    """One :class:`PluginError` line for a batch a method cannot take: ``x`` not a tensor or with no batch
    dimension, ``y`` with another batch size, labels that are neither class ids (N,) nor (soft / one-hot)
    rows (N, num_classes) for classification (``class_ids``: only ids), non-float regression targets."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise PluginError(f"{who}: x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() < 2:
        raise PluginError(f"{who}: x must have a batch dimension and at least one feature dimension, got "
                          f"shape {tuple(x.shape)}")
    if x.dim() > 5:
        raise PluginError(f"{who}: x must be (N, F), (N, C, L), (N, C, H, W) or (N, C, D, H, W), got {x.dim()}-D "
                          f"shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise PluginError(f"{who}: the batch is empty (shape {tuple(x.shape)})")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise PluginError(f"{who}: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}; y must have one row "
                          "per input")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise PluginError(f"{who}: x must be floating point or uint8, got {x.dtype}")
    if task == "classification":
        if y.dim() == 1:
            if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
                raise PluginError(f"{who}: class labels of shape (N,) must be integer class ids, got {y.dtype} "
                                  "(soft or one-hot labels are (N, num_classes) floats)")
            if num_classes is not None:
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= num_classes:
                    raise PluginError(f"{who}: class ids must be in [0, {num_classes}), got {lo}..{hi}")
        elif y.dim() == 2 and not class_ids:
            if not y.dtype.is_floating_point:
                raise PluginError(f"{who}: soft / one-hot labels (N, K) must be floating point, got {y.dtype}")
            if num_classes is not None and y.shape[1] != num_classes:
                raise PluginError(f"{who}: soft labels have {y.shape[1]} columns, expected num_classes = "
                                  f"{num_classes}")
        elif class_ids:
            raise PluginError(f"{who}: labels must be int64 class ids of shape (N,), got {y.dtype} of shape "
                              f"{tuple(y.shape)}")
        else:
            raise PluginError(f"{who}: labels must be class ids (N,) or soft / one-hot rows (N, num_classes), "
                              f"got shape {tuple(y.shape)}")
    elif not y.dtype.is_floating_point:
        raise PluginError(f"{who}: regression targets must be floating point, got {y.dtype}")
