"""Plugin discovery through Python entry points.

Groups: ``mixcli.methods``, ``mixcli.datasets``, ``mixcli.models``, ``mixcli.losses``, ``mixcli.evaluators``,
``mixcli.loggers``. Discovery is lazy: listing names reads package metadata only, and a plugin is imported the
first time it is used. A plugin that fails to import is reported (by ``mixcli list`` and by a run that names it)
and never breaks the others. Two packages registering the same name in one group is an error that names both
packages.
"""
from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import MixcliError, did_you_mean

KINDS = {"methods": "mixcli.methods", "datasets": "mixcli.datasets", "models": "mixcli.models",
         "losses": "mixcli.losses", "evaluators": "mixcli.evaluators", "loggers": "mixcli.loggers"}
SINGULAR = {"methods": "method", "datasets": "dataset", "models": "model", "losses": "loss",
            "evaluators": "evaluator", "loggers": "logger"}
#: constructor arguments the engine supplies itself (not user options)
ENGINE_ARGS = {"models": ("in_shape", "out_dim"), "loggers": ("out", "uri")}


@dataclass
class Entry:
    kind: str
    name: str
    target: str
    package: str
    version: str
    clash: list[str] = field(default_factory=list)
    _obj: Any = None
    _error: str | None = None

    def load(self) -> Any:
        """Import the plugin; raises MixcliError naming the package and the cause when that fails."""
        if self.clash:
            raise MixcliError(
                f"{SINGULAR[self.kind]} '{self.name}' is registered by more than one package: "
                f"{', '.join([self.package] + self.clash)}; uninstall one of them")
        if self._obj is None and self._error is None:
            try:
                ep = metadata.EntryPoint(self.name, self.target, KINDS[self.kind])
                self._obj = ep.load()
            except Exception as exc:  # a broken plugin must not break anything else
                last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
                where = f" ({last.filename}:{last.lineno})" if last else ""
                self._error = f"{type(exc).__name__}: {exc}{where}"
        if self._error is not None:
            raise MixcliError(
                f"{SINGULAR[self.kind]} plugin '{self.name}' from package '{self.package}' failed to load: "
                f"{self._error}")
        return self._obj

    @property
    def error(self) -> str | None:
        try:
            self.load()
        except MixcliError as exc:
            return str(exc)
        return None


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {}

    def entries(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            found: dict[str, Entry] = {}
            for ep in metadata.entry_points(group=KINDS[kind]):
                dist = getattr(ep, "dist", None)
                package = dist.metadata["Name"] if dist is not None else "?"
                version = dist.version if dist is not None else "?"
                if ep.name in found:
                    prev = found[ep.name]
                    if prev.target == ep.value and prev.package == package:
                        continue  # the same distribution seen twice on sys.path
                    if package not in prev.clash and package != prev.package:
                        prev.clash.append(package)
                    continue
                found[ep.name] = Entry(kind, ep.name, ep.value, package, version)
            self._entries[kind] = dict(sorted(found.items()))
        return self._entries[kind]

    def names(self, kind: str) -> list[str]:
        return list(self.entries(kind))

    def get(self, kind: str, name: str) -> Any:
        entries = self.entries(kind)
        if name not in entries:
            raise MixcliError(f"unknown {SINGULAR[kind]} '{name}'{did_you_mean(name, entries)}; "
                              f"`mixcli list {kind}` shows what is installed")
        return entries[name].load()


def plugin_options(kind: str, cls: Any) -> dict[str, Any]:
    """The user options of a plugin class and their defaults (``inspect.Parameter.empty`` when required)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}
    skip = {"self", *ENGINE_ARGS.get(kind, ())}
    return {p.name: p.default for p in sig.parameters.values()
            if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


REGISTRY = Registry()


def option_type_ok(default: Any, v: Any) -> bool:
    """The rule of experiment files and :func:`mixcli.mixing.create`: a value has the type of the option's
    default (any value when the default is None or there is none)."""
    if default is None or default is inspect.Parameter.empty:
        return True
    if isinstance(default, bool):
        return isinstance(v, bool)
    if isinstance(default, int):
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, str):
        return isinstance(v, str)
    if isinstance(default, (list, tuple)):
        return isinstance(v, (list, tuple))
    if isinstance(default, dict):
        return isinstance(v, dict)
    return True


def option_type_name(default: Any) -> str:
    """How :func:`option_type_ok` names the type it expects."""
    for t, name in ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
                    ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(default, t):
            return name
    return "a value"
