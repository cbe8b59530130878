"""Loggers: where a run's results go besides the output directory (plugins of ``mixcli.loggers``, chosen by
``log:`` / ``--log``, see :mod:`mixcli.config.loggers`). Defaults: ``mlflow`` writes to ``sqlite:///OUT/mlflow.db``
(artifacts under ``OUT/mlartifacts``), ``tensorboard`` to ``OUT/tensorboard/<run_id>/``. While runs train,
each logger hears every session's start, every epoch and the end (:class:`mixcli.api.Logger`);
``mixcli export OUT --to NAME`` sends results that already exist through the same calls. A logger that
raises while a run trains is reported once and switched off for that run; the run goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config.jobs import short_value
from ..errors import MixcliError


def open_loggers(specs: dict[str, str | None], out: Path) -> list:
    """The logger instances for ``specs``; a missing optional dependency is a one-line error."""
    from ..errors import PluginError
    from ..registry import REGISTRY

    found = []
    for name, uri in specs.items():
        cls = REGISTRY.get("loggers", name)
        try:
            found.append(cls(Path(out), uri))
        except PluginError as exc:
            raise MixcliError(f"logger '{name}': {exc}") from None
    return found


def run_files(job_dir: Path) -> list[Path]:
    """A run's artifacts: its config.yaml and every PNG under its job directory."""
    cfg = job_dir / "config.yaml"
    return ([cfg] if cfg.is_file() else []) + sorted(job_dir.rglob("*.png"))


def tags_of(run: dict, grid: dict[str, Any]) -> dict[str, str]:
    tags = {"experiment": str(run["experiment"]), "method": str(run["method"]), "seed": str(run["seed"]),
            "mixcli.run_id": str(run["run_id"])}
    tags.update({f"grid.{k}": str(v) for k, v in grid.items()})
    return tags


class Fanout:
    """The loggers of one run while it trains. A logger that raises is reported and dropped."""

    def __init__(self, loggers: list) -> None:
        self.loggers = loggers

    def _each(self, what: str, *args) -> None:
        for lg in list(self.loggers):
            try:
                getattr(lg, what)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracking server's trouble must not stop training
                self.loggers.remove(lg)
                sys.stderr.write(f"warning: logger {type(lg).__name__} failed ({type(exc).__name__}: {exc}); "
                                 "it is off for this run (`mixcli export` can send the results later)\n")

    def epoch(self, run_id: str, row: dict) -> None:
        self._each("epoch", run_id, row)

    def steps(self, run_id: str, rows: list[dict]) -> None:
        if rows:
            self._each("steps", run_id, rows)

    def end(self, run: dict, job_dir: Path) -> None:
        self._each("end", run, run_files(job_dir))
        self._each("close")


def for_job(job, run: dict) -> Fanout:
    """The loggers of ``job`` (``log:`` / ``--log``), told that a training session of ``run`` starts."""
    fan = Fanout(open_loggers(job.log, job.out) if job.log else [])
    fan._each("start", run, tags_of(run, {k: short_value(v) for k, v in job.grid_values.items()}))
    return fan
