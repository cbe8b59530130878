"""``create(name, **options)``: a registered method (built-in or a third-party package's), its options
checked as in an experiment file, every problem one :class:`~mixcli.api.PluginError` line."""
from __future__ import annotations

import inspect
import math

from ..api import Method, PluginError
from ..errors import MixcliError, did_you_mean
from ..registry import option_type_name as _type_name
from ..registry import option_type_ok as _type_ok

__all__ = ["create", "method_names"]


def method_names() -> list[str]:
    """The names of the installed methods (``mixcli list methods``)."""
    from ..registry import REGISTRY

    return REGISTRY.names("methods")


def create(name: str, **options) -> Method:
    """The method plugin ``name`` built with ``options`` (its ``__init__`` keywords, as under ``method:`` in an
    experiment file; defaults: ``mixcli list methods``). Unknown names and options (with the closest match),
    values of the wrong type and values the method refuses raise one :class:`PluginError` line.

    >>> mixup = create("mixup", alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    """
    from ..registry import REGISTRY, plugin_options

    if not isinstance(name, str):
        raise PluginError(f"create: name must be a method name (a string), got {type(name).__name__}")
    try:
        cls = REGISTRY.get("methods", name)
    except MixcliError as exc:
        raise PluginError(str(exc)) from None
    opts = plugin_options("methods", cls)
    for k, v in options.items():
        if k not in opts:
            hint = (" (off_after_epoch is an option of Mixer, not of the method)" if k == "off_after_epoch"
                    else did_you_mean(k, opts))
            raise PluginError(f"unknown option '{k}' for method '{name}'{hint}")
        if not _type_ok(opts[k], v):
            raise PluginError(f"method '{name}': {k} must be {_type_name(opts[k])}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise PluginError(f"method '{name}': {k} must be a finite number, got {v!r}")
    missing = [k for k, d in opts.items() if k not in options and d is inspect.Parameter.empty]
    if missing:
        raise PluginError(f"method '{name}' needs the option(s) {', '.join(repr(k) for k in missing)}")
    try:
        method = cls(**options)
    except PluginError as exc:
        raise PluginError(f"method '{name}': {exc}") from None
    except (TypeError, ValueError) as exc:
        raise PluginError(f"method '{name}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    method.name = name  # the registered name, for messages
    return method
