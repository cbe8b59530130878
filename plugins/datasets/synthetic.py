"""Random images of a chosen shape, for smoke tests and throughput checks that must not download anything."""
import torch

from mixcli.api import DataBundle, Dataset, PluginError, Split


class SyntheticImages(Dataset):
    """Random uint8 images (default CIFAR-shaped: 3x32x32, 100 classes), generated from ``seed``.

    Each class has its own mean colour, added to uniform noise, so a model can learn something; the numbers
    mean nothing beyond checking that a pipeline runs and how fast. ``n_train`` / ``n_val`` / ``n_test``
    images; ``augment`` turns on the standard crop (4 px reflect padding) and flip.
    """

    task = "classification"

    def __init__(self, n_train: int = 50_000, n_val: int = 0, n_test: int = 10_000, num_classes: int = 100,
                 channels: int = 3, size: int = 32, seed: int = 0, augment: bool = True):
        for name, v, low in (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 1),
                             ("num_classes", num_classes, 2), ("channels", channels, 1), ("size", size, 4)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise PluginError(f"{name} must be an integer >= {low}, got {v!r}")
        self.n = (n_train, n_val, n_test)
        self.k, self.c, self.size, self.seed, self.augment = num_classes, channels, size, seed, augment

    def _split(self, n: int, g: torch.Generator) -> Split:
        y = torch.randint(0, self.k, (n,), generator=g)
        colour = torch.randint(0, 128, (self.k, self.c, 1, 1), generator=torch.Generator().manual_seed(self.seed))
        noise = torch.randint(0, 128, (n, self.c, self.size, self.size), generator=g)
        return Split((noise + colour[y]).to(torch.uint8), y)

    def load(self) -> DataBundle:
        g = torch.Generator().manual_seed(self.seed)
        train, val, test = (self._split(n, g) if n else None for n in self.n)
        return DataBundle(task="classification", train=train, val=val, test=test, num_classes=self.k,
                          mean=(0.5,) * self.c, std=(0.25,) * self.c, augment=self.augment)
