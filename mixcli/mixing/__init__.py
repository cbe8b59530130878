"""What mixing methods share, and mixcli's methods in a user's own training loop.

Submodules (imported when used): :mod:`~mixcli.mixing.boxes` (CutMix boxes), :mod:`~mixcli.mixing.partners`
(mixing partners, C-Mixup), :mod:`~mixcli.mixing.switch` (timm's mixup / CutMix draw),
:mod:`~mixcli.mixing.inputs` (probes and batch checks), :mod:`~mixcli.mixing.tokens` (patch grids, for the
ViT mixers), :mod:`~mixcli.mixing.learned` (the learned mixers' mask generators, momentum encoder and heads:
automix, samix, adautomix), :mod:`~mixcli.mixing.factory` (:func:`create`), :mod:`~mixcli.mixing.mixer` (:class:`Mixer`),
:mod:`~mixcli.mixing.transforms` (:class:`MixTransform`, the batch-transform form),
:mod:`~mixcli.mixing.adapters` (:func:`adapt`: timm / torchvision models) and
:mod:`~mixcli.mixing.lightning` (the Lightning callback; needs ``pip install "mixcli[lightning]"``).

The names below are loaded lazily (PEP 562), so ``import mixcli.mixing`` costs nothing until one is used.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "create": "factory", "method_names": "factory",
    "Mixer": "mixer", "soft_rows": "mixer",
    "MixTransform": "transforms", "INPUT_METHODS": "transforms",
    "adapt": "adapters",
    "MixerCallback": "lightning", "MixerModule": "lightning",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
