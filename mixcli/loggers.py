"""Loggers: where a run's results go besides the output directory (plugins of ``mixcli.loggers``).

In the experiment file::

    log: mlflow                          # or a list: [mlflow, tensorboard]
    log: {mlflow: "http://host:5000", tensorboard: null}   # a destination (tracking URI, directory) each

``mixcli run --log NAME[=URI]`` (repeatable) replaces the file's ``log:``. ``log`` is not part of a run's
configuration (its run id does not change). Defaults: ``mlflow`` writes to ``sqlite:///OUT/mlflow.db``
(artifacts under ``OUT/mlartifacts``), ``tensorboard`` to ``OUT/tensorboard/<run_id>/``. While runs train,
each logger hears every session's start, every epoch and the end (:class:`mixcli.api.Logger`);
``mixcli export OUT --to NAME`` sends results that already exist through the same calls. A logger that
raises while a run trains is reported once and switched off for that run; the run goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import MixcliError


def parse_log(value: Any, where: str) -> dict[str, str | None]:
    """``log:`` as ``{name: uri or None}``; ``where`` names the key in error messages."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        value = {v: None for v in value}
    if not isinstance(value, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in value.items()):
        raise MixcliError(f"{where}: expected a logger name, a list of names or a mapping of names to "
                          f"destinations (e.g. {{mlflow: sqlite:///mlflow.db}}), got {value!r}")
    check_names(value, where)
    return dict(value)


def parse_cli(options: list[str]) -> dict[str, str | None]:
    """``--log NAME[=URI]`` options as ``{name: uri or None}``."""
    specs = {}
    for text in options:
        name, eq, uri = text.partition("=")
        if not name or (eq and not uri):
            raise MixcliError(f"--log {text!r}: expected NAME or NAME=URI, e.g. --log mlflow")
        specs[name] = uri or None
    check_names(specs, "--log")
    return specs


def check_names(specs: dict, where: str) -> None:
    from .registry import REGISTRY

    for name in specs:
        try:
            REGISTRY.get("loggers", name)
        except MixcliError as exc:
            raise MixcliError(f"{where}: {exc}") from None


def open_loggers(specs: dict[str, str | None], out: Path) -> list:
    """The logger instances for ``specs``; a missing optional dependency is a one-line error."""
    from .api import PluginError
    from .registry import REGISTRY

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
    from .jobs import _short

    fan = Fanout(open_loggers(job.log, job.out) if job.log else [])
    fan._each("start", run, tags_of(run, {k: _short(v) for k, v in job.grid_values.items()}))
    return fan


def export(out: Path, to: str, uri: str | None) -> tuple[int, int]:
    """Send every run under ``out`` (with its epochs and files) to the logger ``to``. Runs the destination
    already holds are skipped. The grid is not stored with the results, so the ``grid.<key>`` tags are the
    configuration keys that vary between the runs under ``out`` (as ``compare`` groups them; a plugin by its
    name). Returns (exported, skipped)."""
    from .report import group_keys, load_runs, varying_keys
    from .store import read_table

    check_names({to: None}, "--to")
    runs = load_runs(out)
    epochs = read_table(out, "epochs")
    keys = [k for k in varying_keys(runs) if k != "method" or runs["method"].nunique() > 1]
    grid = group_keys(runs, keys) if keys else None
    (logger,) = open_loggers({to: uri}, out)
    done = skipped = 0
    try:
        for i, run in enumerate(runs.to_dict("records")):
            row = {k: run[k] for k in run if "." not in k}  # the runs row without the flattened config
            if logger.exists(row):
                skipped += 1
                continue
            logger.start(row, tags_of(row, grid.iloc[i].to_dict() if grid is not None else {}))
            steps = _steps(Path(out) / "jobs" / row["run_id"] / "steps.parquet")
            for ep in epochs[epochs["run_id"] == row["run_id"]].sort_values("epoch").to_dict("records"):
                in_epoch = [s for s in steps if s["epoch"] == ep["epoch"]]
                if in_epoch:
                    logger.steps(row["run_id"], in_epoch)
                logger.epoch(row["run_id"], ep)
            logger.end(row, run_files(Path(out) / "jobs" / row["run_id"]))
            done += 1
    finally:
        logger.close()
    return done, skipped


def _steps(path: Path) -> list[dict]:
    """The per-step log of a run (``train.log_steps``), [] when it has none or it cannot be read."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception:  # noqa: BLE001 - a damaged log is left out of the export, not fatal
        return []
