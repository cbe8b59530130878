"""Ray as the distributed executor: every job is a Ray task asking for ``--threads`` CPUs (1 by default,
and the task trains with that many torch threads) and, for a GPU sweep, 1 / ``--jobs-per-gpu`` of a GPU.

Without an address a private local Ray instance is started for the sweep and stopped at its end, even on a
machine where ``ray start`` ran or ``RAY_ADDRESS`` is set; ``--ray-address HOST:PORT`` (or ``auto``) joins
that cluster instead, whose resources decide: GPUs come from the cluster's nodes, not from the driver's,
and a request that no node can hold is refused before anything is submitted. Every node must see the
output directory at the same path (a shared filesystem, as for Ray Tune's ``storage_path``) and have mixcli
and the experiment's plugins installed. A task lost with its worker or node is retried by Ray
(``--max-retries``) and resumes from the run's last checkpoint; the run's claim (:mod:`.claims`) guarantees
that a retry never trains beside a live attempt. The driver follows the tasks' epochs through the claims'
holder files (:mod:`.follow`).
"""
from __future__ import annotations

import os
import socket

from ..errors import MixcliError
from .follow import ClaimFollower
from .worker import FAILED, HELD, Outcome, execute, record_lost, set_threads

MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0
AUTH_HINT = ("; the cluster asks for a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
             "RAY_AUTH_TOKEN_PATH) as on its nodes")


def _task(job, device: str, threads: int):
    from ..training.engine import pick_device

    set_threads(threads)
    return execute(job, pick_device(device))


def _check_listening(address: str) -> None:
    """``HOST:PORT`` with nothing listening fails here in seconds (Ray itself retries for a minute)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise MixcliError(f"--ray-address {address}: expected HOST:PORT (the head's GCS address, e.g. "
                          "10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise MixcliError(f"--ray-address {address}: nothing answers there ({why}); start the head with "
                          "`ray start --head` or give its address (`ray status` on the head)") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


class RayExecutor:
    """Jobs as Ray tasks; an :class:`~mixcli.execution.executors.Executor`."""

    def __init__(self, device: str, threads: int | None, address: str | None = None, jobs_per_gpu: int = 1,
                 slots: int | None = None, max_retries: int = MAX_RETRIES) -> None:
        try:
            import ray
        except ImportError:
            raise MixcliError('--executor ray needs Ray, an optional extra: pip install "mixcli[ray]"') from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address is not None:
                _check_listening(address)
            opts = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
            try:
                if address is None:  # private, whatever RAY_ADDRESS or an earlier `ray start` say
                    ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), **opts)
                else:  # a cluster: its resources are its own (no num_cpus / num_gpus here)
                    ray.init(address=address, **opts)
            except Exception as exc:  # noqa: BLE001 - an unreachable or refusing cluster
                msg = _one_line(exc)
                hint = AUTH_HINT if any(w in msg.lower() for w in ("token", "authenticat", "unauth")) else ""
                where = f"connect to {address}" if address else "start a local Ray instance"
                raise MixcliError(f"--executor ray: could not {where}: {msg}{hint}") from None
        try:
            self._plan(device, threads, jobs_per_gpu, slots, address)
        except BaseException:
            self.close()
            raise
        self.remote = ray.remote(_task).options(num_cpus=self.cpus, num_gpus=self.gpus_per_job,
                                                max_retries=max_retries, retry_exceptions=False)
        self.max_retries = max_retries
        self._refs: dict = {}
        self.follow = ClaimFollower()

    def _plan(self, device: str, threads: int | None, jobs_per_gpu: int, slots: int | None,
              address: str | None) -> None:
        """The task's request from the cluster's nodes (not the driver's): refused in one line when no
        node can hold it."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        where = f"the Ray cluster at {address}" if address else "the local Ray instance"
        total_gpus = sum(n.get("GPU", 0) for n in nodes)
        if device == "cuda" and not total_gpus:
            raise MixcliError(f"--device cuda: no node of {where} has a GPU (Ray sees none); use --device "
                              "cpu, or start the GPU nodes' `ray start` where CUDA is visible")
        use_gpu = device == "cuda" or (device == "auto" and total_gpus > 0)
        self.cpus = float(threads or 1)
        self.gpus_per_job = 1.0 / jobs_per_gpu if use_gpu else 0.0
        self.device, self.threads = ("cuda" if use_gpu else "cpu"), int(threads or 1)
        self.dev = self.device  # (the device a lost task's run is recorded with)

        def fits(n: dict) -> int:
            k = int(n.get("CPU", 0) // self.cpus)
            if self.gpus_per_job:
                k = min(k, int(round(n.get("GPU", 0) / self.gpus_per_job, 6)))
            return k

        if not any(fits(n) for n in nodes):
            big_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
            ask = f"{self.cpus:g} CPU(s)" + (f" and {self.gpus_per_job:g} GPU" if self.gpus_per_job else "")
            opt = "--threads" if self.cpus > big_cpu else "--jobs-per-gpu"
            raise MixcliError(f"{opt}: each Ray task asks for {ask}, but no node of {where} has that much "
                              f"(the largest has {big_cpu:g} CPU(s)"
                              f"{', %g GPU(s)' % max(n.get('GPU', 0) for n in nodes) if self.gpus_per_job else ''})")
        self.slots = slots or max(1, sum(fits(n) for n in nodes))
        self.nodes = len(nodes)

    def free(self) -> int:
        return max(0, self.slots - len(self._refs))

    def busy(self) -> int:
        return len(self._refs)

    def submit(self, job, on_event) -> None:
        self._refs[self.remote.remote(job, self.device, self.threads)] = (job, on_event)
        self.follow.add(job, on_event)  # "start" comes when the task takes the claim, not when queued

    def poll(self, timeout: float) -> None:
        if not self._refs:
            return
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=max(timeout, 0.01))
        self.follow.poll(force=bool(ready))
        for ref in ready:
            job, on_event = self._refs.pop(ref)
            self.follow.remove(job.run_id)
            try:
                outcome = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task died max_retries + 1 times
                reason = f"the Ray task died {self.max_retries + 1} times: {type(exc).__name__}: {_one_line(exc)}"
                status = FAILED if record_lost(job, self.dev, reason) else HELD
                outcome = Outcome(job.run_id, status, error=reason)
            on_event(("done", job.run_id, outcome))

    def close(self, interrupted: bool = False) -> None:
        if interrupted:
            for ref in getattr(self, "_refs", {}):
                self.ray.cancel(ref)
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
