"""K seeds of one configuration trained as one batched model (``train.batch_seeds``, issue #26).

Each member is the run of its seed, built exactly as :func:`mixcli.training.engine.run_job` builds it
(:func:`prepare` calls the engine's ``build`` and ``resume``): its own data order and augmentation
(its ``DeviceData`` generator), its own method draws (its ``ctx.rng``: lambdas, partners, boxes), its own
initial weights, its own optimizer and schedule (SGD/Adam/AdamW state per member), its own BatchNorm
statistics, checkpoint, listeners and result files. Only the model's forward and backward are shared:

    step:  for every member k, its method runs on its own batch with a stand-in model; every call it makes
           (``model(x)``, ``model.forward_to(x, p)``, ``model.forward_from(h, p)``) is collected, the calls
           of all members with the same operation, position and shape run as ONE call of
           ``vmap(functional_call(model, (W_k, B_k), x_k))`` over the stacked weights W (K, ...) and
           buffers B (K, ...) (BatchNorm statistics updated per member), and each member's method gets its
           slice back and goes on to its loss L_k;
           L = sum_k L_k;  L.backward()  (dL/dL_k = 1: member k's gradient is exactly dL_k/dW_k)
           member k's optimizer steps on its own weights with grad = (dL/dW)[k].

The methods are the unchanged plugins: each member's method runs in its own thread, which waits at each
model call until the other members have reached theirs (each member draws only from its own generators,
so the order in which the threads run changes nothing); a member whose calls differ from the others' (another
manifold-mixup position) gets its own vmap call. A member's forward equals its unbatched forward up to the
floating-point order of the batched kernels (``tests/training/test_batched.py`` checks every weight, step by
step, against unbatched runs of the same seeds).

What batches exactly is listed in :mod:`mixcli.config.batch_seeds` (``validate`` refuses the rest). A member
whose training loss is not finite at the end of an epoch (or whose method raises) is recorded failed and
drops out; the others go on. Checkpoints are the members' own (the engine's format), so a batched run
resumes batched or unbatched alike. The training time of a batched epoch is shared equally among its
members (``time_s``, ``wall_time_s``); each member's evaluation time is its own. The engine has no gradient
clipping option; the members' gradients are separate tensors, so one would clip per member.
"""
from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..api import MixOutput
from ..errors import RunFailed
from .callbacks import Callbacks, RunState
from .engine import Recipe, evaluate_all, final_row, start
from .loop import train_mode, train_steps

OPS = ("forward", "forward_to", "forward_from")


@dataclass
class Member:
    """One seed of a batched group: the engine's run state, recipe and listeners of its job."""

    run: RunState
    recipe: Recipe
    callbacks: Callbacks


def prepare(job, store, device, progress=None, prior_attempts=None, notes=None, where=None) -> Member:
    """Build and restore ``job`` as :func:`mixcli.training.engine.run_job` does (the same listeners, in the
    same order), and tell its listeners it starts. The runs rows of a batched member say ``batched``."""
    run, recipe, callbacks = start(job, store, device, progress, prior_attempts, notes, where)
    run.base_row["batched"] = True
    callbacks.on_start(run)
    return Member(run, recipe, callbacks)


# ------------------------------------------------------------------------------ the members' threads
class _Threads:
    """One thread per member running its method; the main thread resumes them all, waits until each has
    parked at its next model call (or returned), and serves the calls. A member touches only its own state
    (its generators, data, method), and the calls are served in member order, so the result does not depend
    on the order in which the threads happen to run. (Resuming them one at a time instead cost twice the
    thread switches: 25 vs 11 ms per step, erm on the Airfoil MLP, K = 10, on the loaded 2-core machine.)"""

    def __init__(self, n: int) -> None:
        self.n = n
        self.go = [threading.Semaphore(0) for _ in range(n)]
        self.parked = threading.Semaphore(0)
        self.task: list = [None] * n
        self.request: list = [None] * n
        self.reply: list = [None] * n
        self.result: list = [None] * n
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True, name=f"member-{k}")
                        for k in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self, k: int) -> None:
        while True:
            self.go[k].acquire()
            fn = self.task[k]
            if fn is None:
                return
            try:
                self.result[k] = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - the member's failure, handed to the main thread
                self.result[k] = (False, exc)
            self.parked.release()

    def call(self, k: int, op: str, args: tuple):
        """In member ``k``'s thread: park at a model call until the main thread has served it."""
        self.request[k] = (op, args)
        self.parked.release()
        self.go[k].acquire()
        ok, value = self.reply[k]
        self.reply[k] = None
        if not ok:
            raise value
        return value

    def run(self, fns: list, serve) -> list:
        """Run ``fns[k]`` in thread k until all return; ``serve({k: (op, args)})`` -> ``{k: (ok, value)}``
        answers the calls parked in each round. Returns ``[(ok, value)]`` per member."""
        for k, fn in enumerate(fns):
            self.task[k], self.result[k], self.request[k] = fn, None, None
        pending = list(range(self.n))
        while pending:
            for k in pending:  # the members run until their next model call (or their end), then park
                self.go[k].release()
            for k in pending:
                self.parked.acquire()
            asked = {k: self.request[k] for k in pending if self.result[k] is None}
            for k in asked:
                self.request[k] = None
            if asked:
                try:
                    answers = serve(asked)
                except BaseException as exc:  # noqa: BLE001 - e.g. a layer vmap cannot run: every asker fails
                    if not isinstance(exc, Exception):
                        self.close()
                        raise
                    answers = {k: (False, exc) for k in asked}
                for k in asked:
                    self.reply[k] = answers[k]
            pending = list(asked)
        return list(self.result)

    def close(self) -> None:
        for k in range(self.n):
            if self.threads[k].is_alive():
                self.task[k] = None
                self.reply[k] = (False, RuntimeError("the batched step was stopped"))
                self.go[k].release()


class _Call(nn.Module):
    """``functional_call`` target: runs ``op`` of the wrapped model (forward, forward_to, forward_from)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, op: str, *args):
        return self.m(*args) if op == "forward" else getattr(self.m, op)(*args)


class _StandIn:
    """What member ``k``'s method sees as the model: its calls are parked and served batched; everything
    else (``embed_position``, ``num_stages``, ...) is read from the member's own model."""

    def __init__(self, threads: _Threads, k: int, model: nn.Module) -> None:
        self._threads, self._k, self._model = threads, k, model

    def __call__(self, x):
        return self._threads.call(self._k, "forward", (x,))

    forward = __call__

    def forward_to(self, x, position):
        return self._threads.call(self._k, "forward_to", (x, position))

    def forward_from(self, h, position):
        return self._threads.call(self._k, "forward_from", (h, position))

    def __getattr__(self, name):
        return getattr(self._model, name)


class BatchedStep:
    """One optimizer step of every member at once (see the module docstring)."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        models = [m.run.model for m in members]
        self.call = _Call(copy.deepcopy(models[0]).to("meta"))
        self.pnames = [n for n, _ in models[0].named_parameters()]
        self.bnames = [n for n, _ in models[0].named_buffers()]
        self.plists = [[p for _, p in m.named_parameters()] for m in models]
        self.blists = [[b for _, b in m.named_buffers()] for m in models]
        self.threads = _Threads(len(members))
        self.standins = [_StandIn(self.threads, k, mod) for k, mod in enumerate(models)]
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []

    def close(self) -> None:
        self.threads.close()

    def _load(self) -> None:
        """The members' current weights and buffers, stacked (K, ...): a fresh leaf per step."""
        with torch.no_grad():
            self.params = [torch.stack([pl[i] for pl in self.plists]).requires_grad_(self.plists[0][i].requires_grad)
                           for i in range(len(self.pnames))]
            self.buffers = [torch.stack([bl[i] for bl in self.blists]) for i in range(len(self.bnames))]

    def _serve(self, asked: dict) -> dict:
        groups: dict = {}
        for k, (op, args) in asked.items():
            if op not in OPS:
                raise RuntimeError(f"a batched member called model.{op}")
            sig = (op,) + tuple((tuple(a.shape), a.dtype) if torch.is_tensor(a) else ("const", a) for a in args)
            groups.setdefault(sig, []).append(k)
        out = {}
        for sig, ks in groups.items():
            op, args0 = sig[0], asked[ks[0]][1]
            where = [i for i, a in enumerate(args0) if torch.is_tensor(a)]
            xs = [torch.stack([asked[k][1][i] for k in ks]) for i in where]
            full = ks == list(range(len(self.members)))
            idx = None if full else torch.tensor(ks, device=xs[0].device if xs else None)
            params = self.params if full else [p[idx] for p in self.params]
            buffers = self.buffers if full else [b[idx].clone() for b in self.buffers]
            names = ["m." + n for n in self.pnames] + ["m." + n for n in self.bnames]

            def one(state, *tensors, op=op, args0=args0, where=where):
                args = list(args0)
                for i, t in zip(where, tensors):
                    args[i] = t
                return functional_call(self.call, dict(zip(names, state)), (op, *args))

            y = vmap(one, randomness="error")(params + buffers, *xs)
            if not full:  # BatchNorm statistics of a subset go back into the stacked buffers
                with torch.no_grad():
                    for b, sub in zip(self.buffers, buffers):
                        b[idx] = sub
            if not torch.is_tensor(y):
                raise RuntimeError(f"model.{op} returned {type(y).__name__}; a batched model returns one tensor")
            for j, k in enumerate(ks):
                out[k] = (True, y[j])
        return out

    def __call__(self, batches: list, mixing: bool) -> list:
        """One step of every member on its batch: ``[(True, detached float32 loss) | (False, exception)]``.
        Member k's optimizer steps only when its forward succeeded."""
        self._load()

        def member(k):
            m, batch = self.members[k], batches[k]
            model = self.standins[k]
            with m.recipe.autocast():
                out = m.run.method(model, batch, m.run.ctx) if mixing else MixOutput.unmixed(model(batch.x), batch.y)
                return out.loss if out.loss is not None else m.recipe.loss_fn(out, m.run.ctx)

        with self.members[0].recipe.autocast():
            results = self.threads.run([lambda k=k: member(k) for k in range(len(self.members))], self._serve)
        ok = [k for k, (good, _) in enumerate(results) if good]
        if ok:
            total = results[ok[0]][1]
            for k in ok[1:]:
                total = total + results[k][1]
            total.backward()
        with torch.no_grad():  # the BatchNorm statistics back into the members' own buffers
            for k, bl in enumerate(self.blists):
                for b, stacked in zip(bl, self.buffers):
                    b.copy_(stacked[k])
        for k in ok:
            m = self.members[k]
            m.run.opt.zero_grad(set_to_none=True)
            for p, stacked in zip(self.plists[k], self.params):
                if stacked.grad is not None:
                    p.grad = stacked.grad[k]
            m.run.opt.step()
        return [(True, v.detach().float()) if good else (False, v) for good, v in results]


# ------------------------------------------------------------------------------------ the epoch loop
def train(members: list[Member], on_failed) -> list[tuple[Member, dict]]:
    """Train ``members`` (prepared; the same start epoch, epochs and steps per epoch) to the end, in lockstep.
    A member that fails is told its listeners' ``on_exception`` and handed to ``on_failed(member, exc)``; the
    others go on.
    Returns ``[(member, final runs row)]`` of those that finished. An interruption (``KeyboardInterrupt``)
    tells every live member's listeners and is raised."""
    live = list(members)
    if not live:
        return []
    run0 = live[0].run
    if any((m.run.start_epoch, m.run.epochs, m.run.steps_per_epoch) !=
           (run0.start_epoch, run0.epochs, run0.steps_per_epoch) for m in live):
        raise ValueError("batched members must start at the same epoch and have the same epochs and steps")

    def fail(m: Member, exc: BaseException) -> None:
        live.remove(m)
        m.callbacks.on_exception(m.run, exc)
        on_failed(m, exc)

    try:
        for epoch in range(run0.start_epoch, run0.epochs + 1):
            t0 = time.perf_counter()
            rows = train_epoch(live, epoch, fail)
            share = (time.perf_counter() - t0) / max(1, len(live))
            for m in list(live):
                run, recipe, cfg = m.run, m.recipe, m.run.job.config
                row = rows[id(m)]
                t1 = time.perf_counter()
                try:
                    if epoch % cfg["eval"]["every"] == 0 or epoch == run.epochs:
                        row.update(evaluate_all(run, recipe))
                        m.callbacks.on_evaluate(run, row)
                    spent = share + time.perf_counter() - t1
                    run.wall += spent
                    row["time_s"] = spent
                    run.rows.append(row)
                    m.callbacks.on_epoch_end(run, row)
                except Exception as exc:  # noqa: BLE001 - that member fails, the others go on
                    fail(m, exc)
        done = []
        for m in list(live):
            try:
                result = final_row(m.run)
                m.callbacks.on_end(m.run, result)
                done.append((m, m.run.store.run_row(m.run.job.run_id) or result))
            except Exception as exc:  # noqa: BLE001
                fail(m, exc)
        return done
    except BaseException as exc:
        for m in live:
            m.callbacks.on_exception(m.run, exc)
        raise


def train_epoch(live: list[Member], epoch: int, fail) -> dict:
    """One epoch of batched steps; ``{id(member): epochs-table row}`` of the members still live after it."""
    mixing = {}
    for m in live:
        run, recipe = m.run, m.recipe
        run.epoch = run.ctx.epoch = epoch
        mixing[id(m)] = recipe.off_after is None or epoch <= recipe.off_after
        if mixing[id(m)]:
            run.method.start_epoch(epoch, run.ctx)
        train_mode(run.model, recipe.freeze_bn)
    group = list(live)
    n = group[0].recipe.budget.steps(epoch)
    batches = {id(m): train_steps(m.run.data, m.run.job.config["train"]["batch_size"], n) for m in group}
    sums = {id(m): torch.zeros((), device=m.run.device) for m in group}
    mix = mixing[id(group[0])]  # (the members share the configuration, so off_after_epoch too)
    step = BatchedStep(group)
    try:
        for _ in range(n):
            losses = step([next(batches[id(m)]) for m in group], mix)
            dropped = False
            for m, (ok, value) in zip(list(group), losses):
                if not ok:
                    fail(m, value)
                    dropped = True
                    continue
                m.run.sched.step()
                sums[id(m)] += value
                m.run.ctx.step += 1
                m.callbacks.on_step(m.run, value)
            if dropped:
                step.close()
                group = [m for m in group if m in live]
                if not group:
                    return {}
                step = BatchedStep(group)
    finally:
        step.close()
    rows = {}
    for m in group:
        train_loss = float(sums[id(m)]) / n  # one host sync per member and epoch
        if not math.isfinite(train_loss):
            fail(m, RunFailed(f"the training loss became {train_loss} in epoch {epoch}; lower "
                              "train.optimizer.lr or check the data"))
            continue
        rows[id(m)] = {"epoch": epoch, "train_loss": train_loss, "lr": m.run.opt.param_groups[0]["lr"]}
    return rows
