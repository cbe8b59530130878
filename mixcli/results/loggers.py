"""Loggers: where a run's results go besides the output directory (plugins of ``mixcli.loggers``, chosen by
``log:`` / ``--log``, see :mod:`mixcli.config.loggers`). Defaults: ``mlflow`` writes to ``sqlite:///OUT/mlflow.db``
(artifacts under ``OUT/mlartifacts``), ``tensorboard`` to ``OUT/tensorboard/<run_id>/``. While runs train,
each logger hears every session's start, every epoch and the end (:class:`mixcli.api.Logger`);
``mixcli export OUT --to NAME`` sends results that already exist through the same calls. A logger that
raises while a run trains is reported once, in one line, and switched off for that run; the run goes on.

Before a sweep trains, its driver calls :func:`prepare_loggers`: each destination is made ready once (an
MLflow store created and migrated, its experiments created) and checked within seconds; one that cannot be
reached is one warning line and off for the sweep (the parquet results are never affected).
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


def tags_of(run: dict, grid: dict[str, Any], title: str = "") -> dict[str, str]:
    """A run's descriptive tags; ``title``: its name among the sweep's runs (``mixup alpha=0.4 s1``,
    :func:`mixcli.config.jobs.titles`), as ``mixcli.name`` and, without the seed, ``mixcli.group``."""
    tags = {"experiment": str(run["experiment"]), "method": str(run["method"]), "seed": str(run["seed"]),
            "mixcli.run_id": str(run["run_id"])}
    tags.update({f"grid.{k}": str(v) for k, v in grid.items()})
    title = title or f"{run['method']} s{run['seed']}"
    tags["mixcli.name"] = title
    tags["mixcli.group"] = title.rsplit(" s", 1)[0] if title.endswith(f" s{run['seed']}") else title
    return tags


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and the first line of its message (a database error's SQL
    and its 'background' link left out)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.replace("(Background on this error", "").strip()
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 1] + "…"


def prepare_loggers(jobs: list, warn) -> None:
    """Make every destination the ``jobs`` log to ready, once, in the sweep's driver (:meth:`Logger.prepare`:
    an MLflow store's creation and migration, its experiments, a short reachability check). A destination
    that fails is one ``warn`` line and is removed from the jobs' loggers: the sweep trains without it."""
    dests: dict[tuple, list] = {}
    for j in jobs:
        for name, uri in (j.log or {}).items():
            dests.setdefault((str(j.out), name, uri), []).append(j)
    for (out, name, uri), its in dests.items():
        try:
            (lg,) = open_loggers({name: uri}, Path(out))
            lg.prepare(sorted({str(j.config["name"]) for j in its}))
        except MixcliError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tracker's trouble never stops the sweep
            warn(f"warning: logger {name} ({uri or 'default'}): {one_line(exc)}; it is off for this sweep "
                 f"(later: mixcli export {out} --to {name}" + (f" --uri {uri}" if uri else "") + ")")
            for j in its:
                j.log = {k: v for k, v in j.log.items() if k != name}


class Fanout:
    """The loggers of one run while it trains. A logger that raises is reported in one line and dropped;
    ``notes`` collects those lines (the run's outcome shows them), else they go to stderr."""

    def __init__(self, loggers: list, notes: list | None = None) -> None:
        self.loggers, self.notes = loggers, notes

    def _each(self, what: str, *args) -> None:
        for lg in list(self.loggers):
            try:
                getattr(lg, what)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracking server's trouble must not stop training
                self.loggers.remove(lg)
                line = (f"logger {type(lg).__name__.lower()} failed ({one_line(exc)}); off for this run "
                        "(mixcli export sends it later)")
                if what != "close":
                    with _quiet():
                        try:
                            lg.close()
                        except Exception:  # noqa: BLE001
                            pass
                if self.notes is not None:
                    self.notes.append(line)
                else:
                    sys.stderr.write(f"warning: {line}\n")

    def epoch(self, run_id: str, row: dict) -> None:
        self._each("epoch", run_id, row)

    def steps(self, run_id: str, rows: list[dict]) -> None:
        if rows:
            self._each("steps", run_id, rows)

    def end(self, run: dict, job_dir: Path) -> None:
        self._each("end", run, run_files(job_dir))
        self._each("close")


def for_job(job, run: dict, notes: list | None = None) -> Fanout:
    """The loggers of ``job`` (``log:`` / ``--log``), told that a training session of ``run`` starts."""
    fan = Fanout(open_loggers(job.log, job.out) if job.log else [], notes)
    fan._each("start", run, tags_of(run, {k: short_value(v) for k, v in job.grid_values.items()},
                                    getattr(job, "title", "")))
    return fan


class _quiet:
    """Library log lines (and warnings) of a failing logger's cleanup are not shown."""

    def __enter__(self):
        import logging
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)

    def __exit__(self, *exc):
        import logging

        logging.disable(logging.NOTSET)
        self._w.__exit__(*exc)
