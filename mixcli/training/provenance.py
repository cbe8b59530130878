"""Provenance of a run: what produced it, recorded in its runs row, and which finished runs are stale.

Columns (see :data:`mixcli.results.store.RUN_COLUMNS`):

- ``git_commit``, ``git_dirty``: ``HEAD`` of the git repository holding the experiment file, and whether
  its tracked files differ from that commit (or the experiment file itself is not tracked). Both are empty
  when the file is not in a git repository or git is not installed; provenance never fails a run.
- ``torch_version``, ``cuda_version`` (torch's CUDA build, empty for a CPU build), ``gpu`` (the device's
  name when the run trained on CUDA). ``mixcli_version`` and ``host`` were already recorded.
- ``plugin_versions``: JSON ``{package: version}`` of every package whose plugins (method, dataset,
  model, loss) the run used; the built-in plugins belong to the package ``mixcli``.

Run ids hash the configuration only, so a finished run is reused when a plugin package changes version.
:func:`stale_reason` says why a finished run is stale; :mod:`mixcli.execution.stale` finds those runs of a
sweep, ``mixcli run`` warns about them and ``--rerun-stale`` retrains them.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

PLUGIN_KEYS = {"method": "methods", "dataset": "datasets", "model": "models", "loss": "losses"}


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(path: str | Path | None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding ``path``; (None, None) outside a repository."""
    if path is None:
        return None, None
    p = Path(path).resolve()
    cwd = p if p.is_dir() else p.parent
    if not cwd.is_dir():
        return None, None
    head = _git(cwd, "rev-parse", "--verify", "-q", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None, None
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    dirty = status is None or status.returncode != 0 or bool(status.stdout.strip())
    if p.is_file():
        tracked = _git(cwd, "ls-files", "--error-unmatch", "--", p.name)
        dirty = dirty or tracked is None or tracked.returncode != 0
    return head.stdout.strip(), dirty


def plugin_versions(cfg: dict) -> dict[str, str]:
    """``{package: version}`` of the packages providing the plugins ``cfg`` uses (installed now)."""
    from ..registry import REGISTRY

    out = {}
    for key, kind in PLUGIN_KEYS.items():
        spec = cfg.get(key)
        name = spec.get("name") if isinstance(spec, dict) else spec
        entry = REGISTRY.entries(kind).get(name) if isinstance(name, str) else None
        if entry is not None:
            out[entry.package] = entry.version
    return dict(sorted(out.items()))


def provenance(cfg: dict, source: str | Path | None, device) -> dict:
    """The provenance columns of a run of ``cfg`` (``source``: the experiment file) on ``device``."""
    import torch

    commit, dirty = git_state(source)
    gpu = None
    if getattr(device, "type", None) == "cuda":
        try:
            gpu = torch.cuda.get_device_name(device)
        except Exception:  # noqa: BLE001 - a name is nice to have, never a reason to fail
            gpu = None
    return {"git_commit": commit, "git_dirty": dirty, "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "gpu": gpu,
            "plugin_versions": json.dumps(plugin_versions(cfg), sort_keys=True)}


def stale_reason(row: dict | None, cfg: dict) -> str | None:
    """Why the finished run ``row`` of ``cfg`` was produced by other plugin package versions than those
    installed now (e.g. ``mixcli 0.1.0 -> 0.2.0``), or None. Runs recorded before provenance existed (no
    ``plugin_versions``) are not judged."""
    if not row or row.get("status") != "finished" or not isinstance(row.get("plugin_versions"), str):
        return None
    try:
        old = json.loads(row["plugin_versions"])
    except ValueError:
        return None
    now = plugin_versions(cfg)
    changed = [f"{pkg} {old.get(pkg, 'absent')} -> {ver}" for pkg, ver in now.items() if old.get(pkg) != ver]
    return ", ".join(changed) or None
