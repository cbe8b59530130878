"""A third-party plugin package made on the fly (a module plus its ``dist-info``, no pip), with methods
that fail on purpose: they let the sweep tests inject faults into real runs, in this process and in
worker processes (which find it through PYTHONPATH)."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

FAULTY = '''
"""Methods that fail on purpose at epoch ``at``."""
import os, signal, sys
from pathlib import Path
from mixcli.api import Method, MixOutput, PluginError


class _Faulty(Method):
    def __init__(self, at: int = 2, marker: str = ""):
        self.at, self.marker = at, marker

    def armed(self, ctx) -> bool:
        if ctx.epoch < self.at:
            return False
        if self.marker:  # fire once: only while the marker file does not exist yet
            if Path(self.marker).exists():
                return False
            Path(self.marker).write_text(str(os.getpid()))
        return True

    def __call__(self, model, batch, ctx):
        if self.armed(ctx):
            self.fire()
        return MixOutput.unmixed(model(batch.x), batch.y)


class Raiser(_Faulty):
    """Raises a PluginError in the middle of training."""
    def fire(self):
        raise PluginError("the faulty plugin gave up")


class Exiter(_Faulty):
    """Calls sys.exit in the middle of training."""
    def fire(self):
        sys.exit(3)


class Killer(_Faulty):
    """Kills its own process (as the OOM killer would) in the middle of training."""
    def fire(self):
        os.kill(os.getpid(), signal.SIGKILL)


class Crasher(_Faulty):
    """Crashes natively (a segfault in C code, as a broken extension would) in the middle of training."""
    def fire(self):
        import ctypes
        ctypes.string_at(0)


class Slow(_Faulty):
    """Sleeps at each step, so that a test can interrupt a run mid-epoch."""
    def fire(self):
        import time
        time.sleep(0.05)
'''


def install_faulty(root: Path, monkeypatch) -> Path:
    """Write the package under ``root``, put it on sys.path and PYTHONPATH, reset the registry."""
    from mixcli.registry import REGISTRY

    root.mkdir(parents=True, exist_ok=True)
    (root / "mixcli_faulty.py").write_text(textwrap.dedent(FAULTY))
    info = root / "mixcli_faulty-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mixcli-faulty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mixcli.methods]\nraiser = mixcli_faulty:Raiser\nexiter = mixcli_faulty:Exiter\n"
        "killer = mixcli_faulty:Killer\nslow = mixcli_faulty:Slow\ncrasher = mixcli_faulty:Crasher\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    monkeypatch.setattr(REGISTRY, "_entries", {})
    sys.modules.pop("mixcli_faulty", None)
    return root
