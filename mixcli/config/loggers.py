"""The ``log:`` key of an experiment file and ``mixcli run --log``: which loggers, to which destination.

In the experiment file::

    log: mlflow                          # or a list: [mlflow, tensorboard]
    log: {mlflow: "http://host:5000", tensorboard: null}   # a destination (tracking URI, directory) each

``mixcli run --log NAME[=URI]`` (repeatable) replaces the file's ``log:``. ``log`` is not part of a run's
configuration (its run id does not change). What the loggers do with a run: :mod:`mixcli.results.loggers`.
"""
from __future__ import annotations

from typing import Any

from ..errors import MixcliError


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
    from ..registry import REGISTRY

    for name in specs:
        try:
            REGISTRY.get("loggers", name)
        except MixcliError as exc:
            raise MixcliError(f"{where}: {exc}") from None
