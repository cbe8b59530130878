"""The files a run writes after each epoch (its epochs table, its checkpoint), written on a background
thread so that training never waits for serialisation or ``fsync``.

Writes run in the order they were submitted, each one atomic as before (:func:`mixcli.results.store.atomic_write`),
so the files on disk are always those of a finished epoch: at worst an older one, which a resume handles
like any checkpoint. At most ``depth`` writes wait (a slow disk makes training wait rather than pile up
memory). What is handed over is a snapshot: the tensors of a state are cloned when submitted, so the next
epoch's updates never reach a checkpoint being written. A write that fails (a full disk) raises its error in
the training thread at the next :meth:`submit` or at :meth:`close`. :attr:`EpochWriter.seconds` is how
long the last completed write took (wall time), by which :class:`mixcli.training.checkpoints.StoreWrites`
decides how often to write.
"""
from __future__ import annotations

import queue
import threading
import time

import torch


def snapshot(obj):
    """``obj`` with every tensor in it (nested dicts, lists, tuples) detached and cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class EpochWriter:
    def __init__(self, depth: int = 2) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.seconds: float | None = None  # wall time of the last completed write (None before the first)

    def submit(self, fn, *args) -> None:
        """Run ``fn(*args)`` after the writes submitted before it."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mixcli-epoch-writer", daemon=True)
            self._thread.start()
        self._q.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:  # after a failure the later writes are dropped (the run fails)
                fn, args = item
                t0 = time.perf_counter()
                try:
                    fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                    self._error = exc
                self.seconds = time.perf_counter() - t0

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every submitted write; then raise the first write's error, if any (``raise_errors``)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if raise_errors:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
