"""The test accuracy of each of AutoMix's four heads, as its reference code reports them."""
from __future__ import annotations

import torch

from mixcli.api import EvalContext, Evaluator, PluginError, method_class, metric

HEADS = ("mix_k", "one_k", "mix_q", "one_q")


class AutomixHeads(Evaluator):
    """Test accuracy of the heads of a run trained with ``method: automix``: ``automix_<head>_accuracy``
    for ``mix_k``, ``one_k`` (the momentum encoder f_k with the momentum copies of the mixed and clean
    heads), ``mix_q`` and ``one_q`` (the trained model f_q with its mixed head and its classifier; ``one_q``
    is the run's own ``accuracy``). OpenMixup ``AutoMixup.simple_test`` reports the same four
    (``acc_mix_k``, ``acc_one_k``, ``acc_mix_q``, ``acc_one_q``); papers quote the best of them. With the
    method's ``heads: shared`` the mixed heads are the clean ones. Liu et al., "AutoMix: Unveiling the
    Power of Mixup for Stronger Classifiers", ECCV 2022.
    """

    paper = "Liu et al., AutoMix, ECCV 2022"
    metrics = tuple(metric(f"automix_{h}_accuracy", True, percent=True,
                           doc=f"test accuracy of AutoMix's {h} head") for h in HEADS)

    def check_config(self, config: dict, dataset) -> None:
        method = (config.get("method") or {}).get("name")
        try:
            has_heads = callable(getattr(method_class(method), "head_logits", None))
        except PluginError:
            has_heads = False  # an unknown method is reported by the method check
        if not has_heads:
            raise PluginError(f"automix_heads reports the four heads of a learned mixer (automix, samix, adautomix); "
                              f"this experiment's method is {method!r}, which has none")

    def __call__(self, model, ctx: EvalContext) -> dict[str, float]:
        heads = getattr(model, "automix_heads", None)
        if heads is None:
            raise PluginError("automix_heads reports the heads of a learned mixer; this run's model has none "
                              "(use it with method: automix)")
        correct = {h: torch.zeros((), device=ctx.device) for h in HEADS}
        n = 0
        for p, y in ctx.batches("test"):
            with torch.no_grad(), ctx.autocast():
                out = heads(model, ctx.to_input(p))
            for h in HEADS:
                correct[h] += (out[h].float().argmax(1) == y).sum()
            n += len(y)
        return {f"automix_{h}_accuracy": float(correct[h]) / n for h in HEADS}
