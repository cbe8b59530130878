"""The executor contract, and the executor that ``mixcli run``'s options ask for."""
from __future__ import annotations

import os

from typing import Any, Callable, Protocol

from ..errors import MixcliError

Event = tuple  # (kind, run_id, payload): see Executor

#: torch intra-op threads per job unless ``--threads`` says otherwise, whatever the machine's core count:
#: the numbers of a run depend on its thread count (reductions split differently), so a fixed default gives
#: the same numbers on every machine, and one thread per job never makes the jobs fight for the cores.
#: Parallelism comes from the workers instead (``--jobs``, default: the cores on CPU).
THREADS = 1


class Executor(Protocol):
    """Where jobs train: this process, worker processes, Ray tasks. The scheduler (:mod:`.sweep`) is the
    only caller.

    ``submit(job, on_event)`` hands a job over (only while ``free() > 0``); everything that happens to it is
    reported to ``on_event`` as ``(kind, run_id, payload)`` events, from within :meth:`poll`:
    ``("start", id, (epochs, steps, start_epoch))``, ``("step", id, n_steps)``, ``("epoch", id, (epoch,
    row))`` and, exactly once per submitted job, ``("done", id, Outcome)`` (:class:`.worker.Outcome`).
    ``poll(timeout)`` waits at most about ``timeout`` seconds for events (an in-process executor trains the
    job inside it). ``close(interrupted)`` stops the workers (``interrupted``: the runs in progress record
    themselves interrupted)."""

    slots: int   # jobs it trains at once

    def free(self) -> int: ...
    def busy(self) -> int: ...
    def submit(self, job: Any, on_event: Callable[[Event], None]) -> None: ...
    def poll(self, timeout: float) -> None: ...
    def close(self, interrupted: bool = False) -> None: ...


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


EXECUTORS = ("local", "ray", "slurm")


def make_executor(kind: str, device: str, jobs: int | None, threads: int | None, gpus: str | None,
                  jobs_per_gpu: int, ray_address: str | None, in_process: bool = False,
                  n_jobs: int | None = None, max_retries: int = 3, slurm: dict | None = None) -> Executor:
    """The executor for ``mixcli run``'s options. ``n_jobs``: how many jobs the sweep has (no more workers
    than that are started); ``slurm``: the ``--slurm-*`` options (:class:`.slurm.SlurmOptions`)."""
    from ..training.engine import pick_device

    if kind not in EXECUTORS:
        raise MixcliError(f"--executor {kind}: expected local, ray or slurm")
    if in_process and kind != "local":
        name = {"ray": "Ray", "slurm": "SLURM"}[kind]
        raise MixcliError(f"--in-process: the jobs run in this process, not as {name} tasks; drop --executor "
                          f"{kind}")
    if in_process and jobs is not None and jobs > 1:
        raise MixcliError(f"--in-process runs one job at a time in this process; drop --jobs {jobs} "
                          "(or --in-process)")
    if jobs is not None and jobs < 1:
        raise MixcliError(f"--jobs {jobs}: expected a positive number of jobs at once")
    if jobs_per_gpu < 1:
        raise MixcliError(f"--jobs-per-gpu {jobs_per_gpu}: expected a positive integer")
    if threads is not None and threads < 1:
        raise MixcliError(f"--threads {threads}: expected a positive integer")
    if max_retries < 0:
        raise MixcliError(f"--max-retries {max_retries}: expected 0 or more")
    if ray_address is not None and kind != "ray":
        raise MixcliError("--ray-address is only used with --executor ray")
    if kind != "slurm" and any(v not in (None, [], ()) for v in (slurm or {}).values()):
        raise MixcliError("--slurm-* options are only used with --executor slurm")
    if kind in ("ray", "slurm"):  # the devices are the cluster's, not this machine's
        if device not in ("auto", "cpu", "cuda"):
            raise MixcliError(f"--device {device}: expected auto, cpu or cuda")
        if gpus is not None:
            raise MixcliError(f"--gpus {gpus}: with --executor {kind} the cluster gives each job its GPU "
                              "(use --jobs-per-gpu with ray, --slurm-gpus-per-task with slurm)")
        if kind == "ray":
            from .ray_executor import RayExecutor

            return RayExecutor(device, threads, ray_address, jobs_per_gpu, slots=jobs, max_retries=max_retries)
        from .slurm import SlurmExecutor, SlurmOptions

        return SlurmExecutor(SlurmOptions.of(slurm or {}), device, threads, slots=jobs, max_retries=max_retries)
    dev = pick_device(device)
    gpu_list = None
    if dev.type == "cuda":
        import torch

        visible = list(range(torch.cuda.device_count()))
        if gpus is not None:
            try:
                gpu_list = [int(g) for g in gpus.split(",") if g.strip()]
            except ValueError:
                raise MixcliError(f"--gpus {gpus}: expected comma-separated GPU indices, e.g. 0,1") from None
            bad = [g for g in gpu_list if g not in visible]
            if bad or not gpu_list:
                raise MixcliError(f"--gpus {gpus}: GPU {bad[0] if bad else '?'} is not visible here "
                                  f"(visible: {','.join(map(str, visible)) or 'none'})")
        else:
            gpu_list = visible
        n = jobs or len(gpu_list) * jobs_per_gpu
        if n > len(gpu_list) * jobs_per_gpu:
            raise MixcliError(f"--jobs {n}: more than {len(gpu_list)} GPU(s) x --jobs-per-gpu {jobs_per_gpu}; "
                              "raise --jobs-per-gpu to pack jobs onto a GPU")
    else:
        if gpus is not None:
            raise MixcliError(f"--gpus {gpus}: the jobs run on the CPU here (--device {device})")
        n = jobs or cores()
    threads = threads or THREADS
    if in_process:
        n = 1
    elif jobs is None and n_jobs is not None:
        n = max(1, min(n, n_jobs))  # the default: no idle workers
    from .local import InlineExecutor, ProcessPool

    if in_process:
        if gpu_list is not None and gpus is not None:
            raise MixcliError(f"--in-process: the job runs in this process on the default GPU; drop --gpus {gpus} "
                              "(CUDA_VISIBLE_DEVICES picks the GPU)")
        return InlineExecutor(device, threads)
    return ProcessPool(n, device, threads, gpus=gpu_list, jobs_per_gpu=jobs_per_gpu)
