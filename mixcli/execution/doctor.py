"""``mixcli doctor OUT``: can processes on several machines share this output directory? Checks that an
exclusive file lock works and excludes a second process, reads the mount's options (NFS ``local_lock`` /
``nolock``, Lustre ``localflock`` make locks local to each machine), and lists the live claims of other
hosts. Each check is one line, ``ok`` or ``problem``."""
from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import socket
from pathlib import Path

from ..errors import MixcliError
from .claims import LOCAL_LOCKS, claims_dir, holder, mount_options


def _try_lock(path: str, q) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        q.put(True)
    except OSError:
        q.put(False)
    finally:
        os.close(fd)


def doctor(out: Path) -> list[tuple[bool, str]]:
    """``[(ok, line)]`` of the checks on ``out``."""
    out = Path(out)
    if not out.is_dir():
        raise MixcliError(f"{out}: no such output directory")
    found = []
    d = claims_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    probe = d / f".doctor-{socket.gethostname()}-{os.getpid()}.lock"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            found.append((True, f"an exclusive lock can be taken in {d}"))
        except OSError as exc:
            found.append((False, f"no file lock can be taken in {d} ({exc.strerror}): mixcli run refuses it"))
            return found
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_try_lock, args=(str(probe), q))
        p.start()
        p.join(60)
        other = q.get(timeout=5) if not p.exitcode else None
        found.append((other is False, "a second process is kept out while the lock is held" if other is False
                      else "a second process got the same lock: locks do not exclude here"))
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    opts = mount_options(out)
    local = [o for o in LOCAL_LOCKS if o in opts.split(" ", 1)[-1].split(",")]
    if local:
        found.append((False, f"mounted {opts}: {', '.join(local)} makes locks local to this machine; processes "
                      "on other machines would train the same runs (remount without it)"))
    else:
        found.append((True, f"mount: {opts or 'unknown'} (no option that keeps locks local to one machine)"))
    me = socket.gethostname()
    others = []
    for lock in d.glob("*.lock"):
        h = holder(out, lock.stem)
        if h and h.get("host") not in (me, None, "?"):
            others.append(f"{lock.stem} on {h['host']}")
    if others:
        found.append((True, f"runs held from other hosts right now (their locks reach here): {', '.join(others[:5])}"))
    return found
