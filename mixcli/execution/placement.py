"""Where a job runs: the SLURM job (array job and task) and node, the Ray node and task, read in the process
that trains it. Recorded in the run's claim (``mixcli status`` shows it next to the holder) and in its runs
row (the columns ``slurm_job``, ``node``, ``ray_node``, ``ray_task``), so that a failed run leads to its
log: ``OUT/jobs/<run_id>/`` holds the per-run log of a SLURM task, ``sacct -j <slurm_job>`` its accounting.
"""
from __future__ import annotations

import os
import socket
import sys

#: the runs-row columns this module fills (all strings; empty when the job did not run there)
COLUMNS = ("slurm_job", "node", "ray_node", "ray_task")


def slurm_job() -> str:
    """SLURM's name of this job: ``<array job>_<task>`` for an array task, else the job id ('' outside)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def placement() -> dict[str, str]:
    """``{slurm_job, node, ray_node, ray_task}`` of this process (empty strings where they do not apply)."""
    where = {"slurm_job": slurm_job(), "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
             "ray_node": "", "ray_task": ""}
    ray = sys.modules.get("ray")  # only inside a Ray worker is Ray imported and initialized
    if ray is not None:
        try:
            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                where["ray_node"] = ctx.get_node_id() or ""
                where["ray_task"] = ctx.get_task_id() or ""
        except Exception:  # noqa: BLE001 - information only
            pass
    return where


def short(info: dict) -> str:
    """The placement of a claim or a runs row in a few characters: ``slurm 123_4``, ``ray node ab12cd34``."""
    bits = []
    if info.get("slurm_job"):
        bits.append(f"slurm {info['slurm_job']}")
    if info.get("ray_node"):
        bits.append(f"ray node {str(info['ray_node'])[:8]}")
    return ", ".join(bits)
