"""How jobs are executed: the layer between the jobs of an experiment and the engine (which trains one job).

- :mod:`.claims`: a run is claimed (an OS lock released when its holder dies) before it trains, so any
  number of ``mixcli run`` processes share one output directory and train every run exactly once.
- :mod:`.worker`: run one job wherever it executes; every failure inside a job is recorded, never raised.
- :mod:`.local`: a pool of persistent worker processes (the default), or this process (``--in-process``,
  for debugging).
- :mod:`.ray_executor`: Ray tasks on a local instance or a cluster (``--executor ray``).
- :mod:`.sweep`: the scheduler (parents first, waits for runs held elsewhere, one outcome per job).
- :mod:`.display`: live bars on a terminal, one line per event in a log.
- :mod:`.status`: what ``mixcli status`` reports.
"""
from __future__ import annotations

import os

from ..errors import MixcliError


#: torch intra-op threads per job unless ``--threads`` says otherwise, whatever the machine's core count:
#: the numbers of a run depend on its thread count (reductions split differently), so a fixed default gives
#: the same numbers on every machine, and one thread per job never makes the jobs fight for the cores.
#: Parallelism comes from the workers instead (``--jobs``, default: the cores on CPU).
THREADS = 1


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_executor(kind: str, device: str, jobs: int | None, threads: int | None, gpus: str | None,
                  jobs_per_gpu: int, ray_address: str | None, in_process: bool = False,
                  n_jobs: int | None = None):
    """The executor for ``mixcli run``'s options (its ``on_event`` is set by the scheduler). ``n_jobs``: how
    many jobs the sweep has (no more workers than that are started)."""
    from ..engine import pick_device

    if kind not in ("local", "ray"):
        raise MixcliError(f"--executor {kind}: expected local or ray")
    if in_process and kind == "ray":
        raise MixcliError("--in-process: the jobs run in this process, not as Ray tasks; drop --executor ray")
    if in_process and jobs is not None and jobs > 1:
        raise MixcliError(f"--in-process runs one job at a time in this process; drop --jobs {jobs} "
                          "(or --in-process)")
    if jobs is not None and jobs < 1:
        raise MixcliError(f"--jobs {jobs}: expected a positive number of jobs at once")
    if jobs_per_gpu < 1:
        raise MixcliError(f"--jobs-per-gpu {jobs_per_gpu}: expected a positive integer")
    if threads is not None and threads < 1:
        raise MixcliError(f"--threads {threads}: expected a positive integer")
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
    if kind == "ray":
        from .ray_executor import RayExecutor

        per_gpu = 1.0 / jobs_per_gpu if dev.type == "cuda" else 0.0
        return RayExecutor(device, threads, ray_address, per_gpu, slots=jobs)
    if ray_address is not None:
        raise MixcliError("--ray-address is only used with --executor ray")
    from .local import InlineExecutor, ProcessPool

    if in_process:
        if gpu_list is not None and gpus is not None:
            raise MixcliError(f"--in-process: the job runs in this process on the default GPU; drop --gpus {gpus} "
                              "(CUDA_VISIBLE_DEVICES picks the GPU)")
        return InlineExecutor(device, threads)
    return ProcessPool(n, device, threads, gpus=gpu_list, jobs_per_gpu=jobs_per_gpu)
