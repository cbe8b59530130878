"""Mean squared error against the mixed regression target."""
import torch
import torch.nn.functional as F

from mixcli.api import Context, Loss, MixOutput, mixed_regression_target


class MSE(Loss):
    """Mean squared error against lam * y_a + (1 - lam) * y_b (regression)."""

    tasks = ("regression",)

    def __call__(self, out: MixOutput, ctx: Context) -> torch.Tensor:
        target = mixed_regression_target(out).float()
        return F.mse_loss(out.logits.float().view(target.shape), target)
