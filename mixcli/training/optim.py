"""The optimizer and the learning-rate schedule of a run (``train.optimizer``, ``train.schedule``)."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, opt: dict) -> list:
    """Trainable parameters; with ``classifier_lr``, two groups (backbone at ``lr``, classifier at it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opt.get("classifier_lr") is None:
        return params
    head = {id(p) for p in model.classifier.parameters()}
    groups = [{"params": [p for p in params if id(p) not in head], "lr": opt["lr"]},
              {"params": [p for p in params if id(p) in head], "lr": opt["classifier_lr"]}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, train: dict, steps_per_epoch: int, total: int | None = None):
    """Optimizer and per-step LR schedule; ``total`` steps (default epochs x steps_per_epoch)."""
    o, s = train["optimizer"], train["schedule"]
    params = param_groups(model, o)
    if o["name"] == "sgd":
        opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                              nesterov=o["nesterov"] and o["momentum"] > 0)
    elif o["name"] == "adamw":
        opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    total = total or train["epochs"] * steps_per_epoch
    warm = s["warmup_epochs"] * steps_per_epoch
    milestones = [m * steps_per_epoch for m in s["milestones"]]

    def factor(step: int) -> float:
        """LR multiplier after ``step`` optimizer steps: linear warm-up, then the schedule."""
        if step < warm:
            return (step + 1) / warm
        if s["name"] == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if s["name"] == "multistep":
            return s["gamma"] ** sum(step >= m for m in milestones)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
