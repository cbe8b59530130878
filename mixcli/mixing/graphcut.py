"""What the graph-cut methods (puzzlemix, comixup) share: the one lock around gco-wrapper's calls.

gco-wrapper keeps every graph in one global ``std::map`` (handle -> instance) that each of its C calls
reads and that creating / destroying a graph writes, with no lock; ctypes releases the GIL, so two threads
cutting at once corrupt the map and the heap (``free(): invalid pointer``, "Invalid instance handle",
segfaults). Every gco call of every method therefore holds :data:`GCO_LOCK` (tests/plugins/test_gco_threads.py),
one lock for the whole process, so that two methods in one process (e.g. two in-process jobs) cannot cut at
the same time either.
"""
from __future__ import annotations

import importlib.util
import threading

__all__ = ["GCO_LOCK", "have_gco"]

#: held around every call into gco-wrapper (it is not thread-safe; see the module docstring)
GCO_LOCK = threading.Lock()


def have_gco() -> bool:
    """Whether gco-wrapper (``import gco``, ``pip install "mixcli[puzzlemix]"``) is installed."""
    return importlib.util.find_spec("gco") is not None
