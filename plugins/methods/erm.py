"""Empirical risk minimization: no mixing (the baseline)."""
from mixcli.api import Batch, Context, Method, MixOutput, Model


class ERM(Method):
    """Plain training on the unmixed batch (the baseline every method is compared with)."""

    family = "input"
    paper = "Vapnik, 1992 (empirical risk minimization)"

    def __call__(self, model: Model, batch: Batch, ctx: Context) -> MixOutput:
        return MixOutput.unmixed(model(batch.x), batch.y)
