"""A probe: K seeds of one job trained as one batched model (``torch.func.stack_module_state`` + ``vmap``)
against the same K seeds trained one after the other, in training images per second.

Each seed has its own initial weights (its own ``torch.manual_seed``), its own batches (a per-seed
permutation of the same data) and its own BatchNorm running statistics (the stacked buffers are updated in
place under ``vmap``). The batched model computes every member's gradient with ``vmap(grad(loss))`` and takes
one SGD step (momentum, weight decay: elementwise, so one optimizer over the stacked (K, ...) parameters is
K independent ones). The sequential baseline trains K plain models with ``torch.optim.SGD``. After the timed
steps the batched members are compared with their sequential twins (max |difference| of the weights), so
the probe also checks that batching trains the same models. On CUDA the steps are timed with CUDA events.

On a 2-core CPU the batching was slower (0.49-0.73x for the digits CNN at K = 1, 3, 8); it stays a probe
until a GPU says otherwise.

    python benchmarks/vmap_seeds.py --device cpu --ks 1,3,8 --steps 20
    python benchmarks/vmap_seeds.py --device cuda --model resnet18 --shape 3,32,32 --batch-size 128
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from mixcli.training.engine import pick_device
from mixcli.registry import REGISTRY


class Timer:
    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            self.s = self.a.elapsed_time(self.b) / 1000
        else:
            self.s = time.perf_counter() - self.t0


def models(args, shape, k: int, device):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(REGISTRY.get("models", args.model)(shape, 10).to(device))
    return out


def batches(x, y, k: int, steps: int, bs: int):
    """Per step: (K, B, ...) inputs and (K, B) labels, each seed with its own permutation."""
    gens = [torch.Generator(device=x.device).manual_seed(100 + s) for s in range(k)]
    perms = [torch.randperm(len(x), device=x.device, generator=g) for g in gens]
    for i in range(steps):
        idx = torch.stack([p[(i * bs) % (len(x) - bs):][:bs] for p in perms])
        yield x[idx], y[idx]


def sequential(nets, data, steps, args, timer_device):
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for m in nets]
    warm = list(batches(*data, len(nets), args.warmup, args.batch_size))
    timed = list(batches(*data, len(nets), steps, args.batch_size))
    for xs, ys in warm:
        for k, (m, o) in enumerate(zip(nets, opts)):
            step(m, o, xs[k], ys[k])
    with Timer(timer_device) as t:
        for xs, ys in timed:
            for k, (m, o) in enumerate(zip(nets, opts)):
                step(m, o, xs[k], ys[k])
    return t.s


def step(m, o, x, y) -> None:
    m.train()
    loss = F.cross_entropy(m(x), y)
    o.zero_grad(set_to_none=True)
    loss.backward()
    o.step()


def batched(nets, data, steps, args, timer_device):
    base = copy.deepcopy(nets[0]).to("meta")
    params, buffers = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    opt = torch.optim.SGD(list(params.values()), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    grads = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0), randomness="different")
    base.train()

    def one(xs, ys):
        g = grads(params, buffers, xs, ys)
        for name, p in params.items():
            p.grad = g[name]
        opt.step()

    for xs, ys in batches(*data, len(nets), args.warmup, args.batch_size):
        one(xs, ys)
    with Timer(timer_device) as t:
        for xs, ys in batches(*data, len(nets), steps, args.batch_size):
            one(xs, ys)
    return t.s, {**params, **buffers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--shape", default="1,8,8")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ks", default="1,3,8")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (mixcli's default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (2048,), generator=g).to(device)
    print(f"{args.model} on {'x'.join(map(str, shape))}, batch {args.batch_size}, {args.steps} steps after "
          f"{args.warmup}, {device} ({'CUDA events' if device.type == 'cuda' else f'{args.threads} thread(s)'})")
    print(f"{'K':>3}{'sequential img/s':>18}{'batched img/s':>15}{'batched/seq':>13}{'max |dw|':>11}  (weights and BN buffers, batched vs sequential)")
    for k in (int(v) for v in args.ks.split(",")):
        seq_nets = models(args, shape, k, device)
        t_seq = sequential(seq_nets, (x, y), args.steps, args, device)
        t_bat, params = batched(models(args, shape, k, device), (x, y), args.steps, args, device)
        diff = max(float((params[n][i].float() - m.state_dict()[n].float()).abs().max())
                   for i, m in enumerate(seq_nets) for n in params)  # weights and BatchNorm buffers
        n_img = k * args.steps * args.batch_size
        print(f"{k:>3}{n_img / t_seq:>18.0f}{n_img / t_bat:>15.0f}{t_seq / t_bat:>12.2f}x{diff:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
