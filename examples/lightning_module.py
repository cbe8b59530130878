"""mixcli's methods in a Lightning module (``pip install "mixcli[lightning]"``), on scikit-learn's digits.

    python examples/lightning_module.py --method mixup --epochs 5

``MixerModule`` gives the module a ``training_step`` that runs the method (and starts its epochs, and keeps
its random state in Lightning's checkpoints); the network, the optimizer and validation stay yours.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mixcli.mixing import Mixer
from mixcli.mixing.lightning import MixerModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_pytorch import digits, net  # noqa: E402 - the data and network of the plain example


class DigitsNet(MixerModule, L.LightningModule):
    def __init__(self, method: str = "mixup", seed: int = 0, **options):
        super().__init__()
        self.net = net()
        self.mixer = Mixer(method, self.net, num_classes=10, seed=seed, **options)

    def forward(self, x):
        return self.net(x)

    # training_step comes from MixerModule: out = self.mixer(x, y); loss = self.mixer.loss(out)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="mixup")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--root", default=None, help="where Lightning writes its logs and checkpoints")
    args = p.parse_args(argv)
    L.seed_everything(0, verbose=False)
    (xtr, ytr), (xte, yte) = digits()
    model = DigitsNet(args.method)
    trainer = L.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, accelerator="cpu", devices=1,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=args.root, enable_checkpointing=args.root is not None)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True, drop_last=True)
    val = DataLoader(TensorDataset(xte, yte), batch_size=512)
    trainer.fit(model, train, val)
    print(f"{args.method}: {trainer.global_step} steps, {trainer.callback_metrics}")
    return trainer, model


if __name__ == "__main__":
    main()
