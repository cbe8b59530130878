"""Ray as the distributed executor: every job is a Ray task with its resource request (``num_gpus`` =
1 / jobs_per_gpu, so several small jobs share a GPU; ``num_cpus`` = the job's torch threads).

Without an address a local Ray instance is started (and stopped at the end); with ``--ray-address`` the
jobs spread over an existing cluster. Every node must see the output directory at the same path (a shared
filesystem, as for Ray Tune's ``storage_path``) and have mixcli and the experiment's plugins installed.
A task lost with its worker or node is retried by Ray (``max_retries``) and resumes from the run's last
checkpoint; the run's claim (:mod:`.claims`) guarantees that a retry never trains beside a live attempt.
"""
from __future__ import annotations

import os

from ..errors import MixcliError
from .worker import FAILED, HELD, Outcome, execute, record_lost, set_threads

MAX_RETRIES = 3


def _task(job, device: str, threads: int | None):
    from ..training.engine import pick_device

    set_threads(threads)
    return execute(job, pick_device(device))


class RayExecutor:
    """Jobs as Ray tasks; an :class:`~mixcli.execution.executors.Executor`."""

    def __init__(self, device: str, threads: int | None, address: str | None = None,
                 gpus_per_job: float = 0.0, slots: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise MixcliError('--executor ray needs Ray, an optional extra: pip install "mixcli[ray]"') from None
        from ..training.engine import pick_device

        self.ray, self.dev = ray, pick_device(device)
        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, **({} if address else {"num_cpus": os.cpu_count()}))
            except Exception as exc:  # noqa: BLE001 - a bad address or an unreachable cluster
                raise MixcliError(f"--executor ray: could not {'connect to ' + address if address else 'start Ray'}"
                                  f": {exc}") from None
        cpus = float(threads or 1)
        self.remote = ray.remote(_task).options(num_cpus=cpus, num_gpus=gpus_per_job, max_retries=MAX_RETRIES,
                                                retry_exceptions=False)
        total = ray.cluster_resources()
        fit = int(total.get("CPU", 1) // cpus)
        if gpus_per_job:
            fit = min(fit, int(total.get("GPU", 0) / gpus_per_job))
        self.slots = slots or max(1, fit)
        self.device, self.threads = device, threads
        self._refs: dict = {}

    def free(self) -> int:
        return max(0, self.slots - len(self._refs))

    def busy(self) -> int:
        return len(self._refs)

    def submit(self, job, on_event) -> None:
        self._refs[self.remote.remote(job, self.device, self.threads)] = (job, on_event)
        on_event(("start", job.run_id, (0, 0, 1)))

    def poll(self, timeout: float) -> None:
        if not self._refs:
            return
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=max(timeout, 0.01))
        for ref in ready:
            job, on_event = self._refs.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task died MAX_RETRIES + 1 times
                reason = f"the Ray task died {MAX_RETRIES + 1} times: {type(exc).__name__}: {str(exc)[:300]}"
                status = FAILED if record_lost(job, self.dev, reason) else HELD
                outcome = Outcome(job.run_id, status, error=reason)
            on_event(("done", job.run_id, outcome))

    def close(self, interrupted: bool = False) -> None:
        if interrupted:
            for ref in self._refs:
                self.ray.cancel(ref)
        if self.started_here:
            self.ray.shutdown()
