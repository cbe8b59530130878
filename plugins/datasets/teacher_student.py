"""Teacher-student regression toy of the mixup over-training theory (Liu, Wang, Guo, Mao, ICLR 2023).

Liu et al., "Over-Training with Mixup May Hurt Generalization", ICLR 2023 (arXiv 2303.01475), analyse
least squares with a random-feature student: mixup's synthetic targets ``lam y_i + (1 - lam) y_j`` differ
from the teacher's value at the mixed input ``f*(lam x_i + (1 - lam) x_j)`` (data-dependent label noise), so
gradient descent first fits the clean pattern (test MSE falls) and then fits that noise (test MSE rises),
while ERM on the clean labels does not. Pair it with the ``random_features`` model (fixed random first layer,
trainable last layer) and full-batch training; see ``experiments/ushape_teacher_student.yaml``.
"""
import numpy as np
import torch

from mixcli.api import DataBundle, Dataset, PluginError, Split

ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh}


class TeacherStudent(Dataset):
    """Synthetic regression: x ~ N(0, I_d), y = a . act(W x) from a random one-hidden-layer teacher.

    Teacher (drawn once from ``seed``): ``W`` (``hidden`` x ``d``) with entries N(0, 1/d) and ``a``
    (``hidden``) with entries N(0, 1/hidden), so ``W x`` has unit-variance entries and ``y`` is O(1).
    ``activation`` is relu or tanh. Targets get optional Gaussian label noise of std ``noise`` (training
    and validation only; the test targets are the teacher's clean values). ``n`` training examples,
    ``n_val`` validation examples (0 for none) and ``n_test`` test examples, all i.i.d. (one random stream per
    split) from ``seed``: the same data for every run seed. Inputs are float32 (N, d), targets float32 (N, 1).
    """

    task = "regression"
    paper = "Liu, Wang, Guo, Mao, Over-Training with Mixup May Hurt Generalization, ICLR 2023"

    def __init__(self, d: int = 20, hidden: int = 10, n: int = 100, n_val: int = 0, n_test: int = 2000,
                 activation: str = "relu", noise: float = 0.0, seed: int = 0):
        for name, v, low in (("d", d, 1), ("hidden", hidden, 1), ("n", n, 2), ("n_val", n_val, 0),
                             ("n_test", n_test, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise PluginError(f"{name} must be an integer >= {low}, got {v!r}")
        if (n + n_val + n_test) * d > 10**9:
            raise PluginError(f"(n + n_val + n_test) x d = {(n + n_val + n_test) * d:,} values is more than 10**9; "
                              "use fewer examples or dimensions")
        if activation not in ACTIVATIONS:
            raise PluginError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if noise < 0:
            raise PluginError(f"noise must be >= 0 (label noise std), got {noise}")
        self.d, self.hidden, self.n, self.n_val, self.n_test = d, hidden, n, n_val, n_test
        self.activation, self.noise, self.seed = activation, float(noise), seed

    def shape(self):
        return (self.d,), 1

    def teacher(self) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's weights ``(W, a)``."""
        rng = np.random.default_rng([self.seed, 0])
        w = rng.normal(0.0, 1.0 / np.sqrt(self.d), (self.hidden, self.d))
        a = rng.normal(0.0, 1.0 / np.sqrt(self.hidden), self.hidden)
        return w, a

    def target(self, x: np.ndarray) -> np.ndarray:
        """The teacher's clean output ``a . act(W x)`` for inputs ``x`` (N, d), as (N,)."""
        w, a = self.teacher()
        return ACTIVATIONS[self.activation](x @ w.T) @ a

    def load(self) -> DataBundle:
        def split(n: int, noisy: bool, stream: int) -> Split:
            rng = np.random.default_rng([self.seed, stream])  # one stream per split: n does not move the test set
            x = rng.standard_normal((n, self.d))
            y = self.target(x)
            if noisy and self.noise:
                y = y + rng.normal(0.0, self.noise, n)
            return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)[:, None])

        train = split(self.n, True, 1)
        val = split(self.n_val, True, 2) if self.n_val else None
        test = split(self.n_test, False, 3)
        return DataBundle(task="regression", train=train, val=val, test=test)
