"""mixcli's methods in a plain PyTorch loop: the 8x8 digits bundled with scikit-learn (no download).

    python examples/plain_pytorch.py --method cutmix --epochs 5
    python examples/plain_pytorch.py --method manifold_mixup --epochs 5      # feature level: needs the model
    python examples/plain_pytorch.py --transform mixup                        # the batch-transform form

Two ways in: ``Mixer`` runs any method (it owns the method's context and seeded generator, and the method
may look at the model: feature-level, saliency, CAMs), ``MixTransform`` is the torchvision/timm-style
``x_mixed, y_soft = transform(x, y)`` for input-level methods, usable as a DataLoader ``collate_fn``.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mixcli.mixing import Mixer, MixTransform


def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    test, train = order[:360], order[360:]
    return (x[train], y[train]), (x[test], y[test])


def net():
    # nn.Sequential ending with its classifier: feature-level methods can address its stages
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(32, 10))


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="cutmix", help="any mixcli method (mixcli list methods)")
    p.add_argument("--transform", default=None, help="an input-level method run as a batch transform instead")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (for a quick check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write a checkpoint (model, optimizer, mixer) here at the end")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = digits()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = 0
    if args.transform:  # the batch transform: mixed images and soft labels straight from the DataLoader
        mix = MixTransform(args.transform, num_classes=10, seed=args.seed)
        loader = DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True, drop_last=True, collate_fn=mix)
        for epoch in range(1, args.epochs + 1):
            model.train()
            for x, y_soft in loader:
                loss = torch.sum(-y_soft * F.log_softmax(model(x), 1), 1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                if args.max_steps and steps >= args.max_steps:
                    break
    else:  # Mixer: the method's forward pass and loss, any method
        mixer = Mixer(args.method, model, num_classes=10, seed=args.seed, train=(xtr, ytr),
                      mean=(0.0,), std=(1.0,), epochs=args.epochs)
        loader = DataLoader(TensorDataset(xtr, ytr, torch.arange(len(ytr))), batch_size=64, shuffle=True,
                            drop_last=True)
        for epoch in range(1, args.epochs + 1):
            mixer.start_epoch(epoch)
            model.train()
            for x, y, index in loader:
                out = mixer(x, y, index=index)     # out.logits, out.y_a, out.y_b, out.lam
                loss = mixer.loss(out)             # soft-target CE, or the method's own objective
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                if args.max_steps and steps >= args.max_steps:
                    break
        if args.save:  # what resumes exactly: load_state_dict on each (and mixer.start_epoch(next epoch))
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mixer": mixer.state_dict()},
                       args.save)
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"{args.transform or args.method}: {steps} steps, test accuracy {100 * acc:.1f}%")
    return acc


if __name__ == "__main__":
    main()
