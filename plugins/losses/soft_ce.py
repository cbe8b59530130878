"""Soft-target cross-entropy, the standard mixup loss."""
import torch

from mixcli.api import Context, Loss, MixOutput, soft_cross_entropy, soft_targets


class SoftCrossEntropy(Loss):
    """Cross-entropy against the mixed soft target: -sum_k t_k log softmax(z)_k.

    With ``t = lam * onehot_s(y_a) + (1 - lam) * onehot_s(y_b)`` this equals the mixup loss
    ``lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)`` of Zhang et al. (ICLR 2018), label smoothing included.
    """

    tasks = ("classification",)
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"

    def __call__(self, out: MixOutput, ctx: Context) -> torch.Tensor:
        return soft_cross_entropy(out.logits, soft_targets(out, ctx.num_classes))
