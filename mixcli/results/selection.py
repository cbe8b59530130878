"""Epoch selection rules: which epoch's numbers stand for a run.

- ``final``: the last evaluated epoch.
- ``best``: the epoch with the best primary metric (accuracy for classification, rmse for regression) on the
  validation split when the run has one, else on the test split (and labelled so: test-set selection is
  optimistic). Ties go to the earliest epoch.
- ``median_last10``: the median over the last 10 evaluated epochs of each metric (the OpenMixup benchmark
  convention; fewer epochs if the run has fewer).

One table never mixes rules; reports name the rule in their title.
"""
from __future__ import annotations

import math

import pandas as pd

from ..config.schema import RULES  # noqa: F401 (the rules applied here)
from ..metrics import METRICS

PRIMARY = {"classification": "accuracy", "regression": "rmse"}


def best_split(epochs: pd.DataFrame, metric: str) -> str:
    col = f"val_{metric}"
    return "val" if col in epochs and epochs[col].notna().any() else "test"


def best_index(epochs: pd.DataFrame, task: str) -> tuple[int | None, str]:
    """Row position of the best epoch and the split it was chosen on."""
    metric = PRIMARY[task]
    split = best_split(epochs, metric)
    col = f"{split}_{metric}"
    if col not in epochs:
        return None, split
    vals = epochs[col].to_numpy(dtype=float)
    ok = [i for i, v in enumerate(vals) if not math.isnan(v)]
    if not ok:
        return None, split
    key = (lambda i: -vals[i]) if METRICS[metric].higher_is_better else (lambda i: vals[i])
    return min(ok, key=lambda i: (key(i), i)), split


def select(epochs: pd.DataFrame, rule: str, task: str) -> tuple[dict, str]:
    """The metrics of one run under ``rule`` (one run's epoch rows, any order) and a label of the rule."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    ep = epochs.sort_values("epoch").reset_index(drop=True)
    if ep.empty:
        return {}, rule
    if rule == "final":
        return ep.iloc[-1].to_dict(), "final epoch"
    if rule == "best":
        i, split = best_index(ep, task)
        if i is None:
            return {}, f"best epoch on {split}"
        return ep.iloc[i].to_dict(), f"best epoch on {split} {PRIMARY[task]}"
    tail = ep.iloc[-10:]
    num = tail.select_dtypes("number").median().to_dict()
    return {**num, "run_id": ep.iloc[-1].get("run_id")}, f"median of last {len(tail)} epochs"
