"""Claims: which process trains a run, so that any number of ``mixcli run`` processes (terminals, a SLURM
job array, machines sharing the output directory) train every run exactly once.

A claim is an exclusive OS lock (``flock``) on ``OUT/claims/<run_id>.lock``, taken without waiting. The
kernel releases it when its holder dies, SIGKILL included, so a run whose holder died is free to be taken
over (and resumes from its checkpoint). The lock is held by the process that trains the run for as long
as it trains it. Beside the lock, ``OUT/claims/<run_id>.json`` records the holder (host, pid, since) and a
heartbeat refreshed every :data:`HEARTBEAT_S` seconds with the epoch reached, which ``mixcli status``
shows. The heartbeat is information only: liveness is the lock itself.

Shared filesystems: Linux NFS (v3 with lockd, v4) and Lustre/GPFS mounted with locking enabled implement
``flock`` across machines. On a filesystem without working locks (e.g. Lustre mounted ``-o noflock``)
taking the lock fails and ``mixcli run`` says so instead of risking double training.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import fs
from ..errors import MixcliError

HEARTBEAT_S = 10.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def claims_dir(out: Path) -> Path:
    return Path(out) / "claims"


class Claim:
    """An exclusive claim on one run; ``acquire()`` never waits."""

    def __init__(self, out: Path, run_id: str) -> None:
        self.run_id = run_id
        self.lock_path = claims_dir(out) / f"{run_id}.lock"
        self.info_path = claims_dir(out) / f"{run_id}.json"
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.info: dict = {}

    def acquire(self, where: dict | None = None) -> bool:
        """Take the claim; False when a live process holds it. ``where``: the holder's placement
        (:func:`.placement.placement`: SLURM job, node, Ray node and task), recorded in the holder file."""
        out = self.lock_path.parent.parent
        dfd = fs.open_dir(out, ["claims"])  # a real folder, never a planted link (mixcli.fs)
        try:
            fd = os.open(self.lock_path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=dfd)
        except OSError as exc:
            raise MixcliError(f"{self.lock_path}: cannot open the run's lock file ({exc.strerror}); it must be "
                              "a plain file mixcli made (remove it)") from None
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise MixcliError(f"{self.lock_path}: cannot take a file lock ({exc.strerror}); the output "
                              "directory's filesystem must support flock (see README: sweeps)") from None
        try:
            check_other_host(self.info_path)
        except MixcliError:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now(), "heartbeat": _now(),
                     "epoch": 0, **(where or {})}
        self._write()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id}", daemon=True)
        self._thread.start()
        return True

    def update(self, write: bool = False, **fields) -> None:
        """Record progress (e.g. ``epoch=3``) in the holder file at the next heartbeat (``write``: now; a
        driver that does not hear the worker directly, Ray's or SLURM's, follows the epochs there)."""
        self.info.update(fields)
        if write:
            self.info["heartbeat"] = _now()
            self._write()

    def _write(self) -> None:
        from ..results.store import atomic_write

        text = json.dumps(self.info).encode()
        try:
            atomic_write(self.info_path, lambda f: f.write(text), root=self.info_path.parent.parent)
        except OSError:
            pass  # the heartbeat is information only; a full disk must not kill the run here

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.info["heartbeat"] = _now()
            self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            fs.unlink(self.info_path, self.info_path.parent.parent)
        except (OSError, MixcliError):
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


LOCAL_LOCKS = ("local_lock=flock", "local_lock=all", "nolock", "localflock")


def check_other_host(info_path: Path) -> None:
    """Just after this process got a run's lock: a holder file naming another host whose heartbeat is
    fresh means that host holds the same lock, so the filesystem's locks do not reach across machines
    (NFS mounted ``local_lock=flock``/``nolock``, Lustre ``localflock``). Refused: training would double."""
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return
    age = heartbeat_age(info)
    if info.get("host") in (None, "?", socket.gethostname()) or age is None or age > 3 * HEARTBEAT_S:
        return
    opts = mount_options(info_path.parent)
    raise MixcliError(f"{info_path.parent}: {info['host']} holds run {info_path.stem} (heartbeat {age:.0f}s ago) "
                      f"and this host ({socket.gethostname()}) got its lock too: file locks on this "
                      f"filesystem ({opts or 'mount options unknown'}) do not reach across machines. Remount "
                      "it without local_lock=flock/all, nolock or localflock (NFS v4, or v3 with lockd; "
                      "Lustre -o flock); `mixcli doctor OUT` checks it")


def mount_options(path: Path) -> str:
    """``type options`` of the mount holding ``path`` (from /proc/mounts; '' where unknown)."""
    try:
        p = Path(path).resolve()
        best = None
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and (str(p) + "/").startswith(parts[1].rstrip("/") + "/"):
                if best is None or len(parts[1]) > len(best[1]):
                    best = parts
        return f"{best[2]} {best[3]}" if best else ""
    except OSError:
        return ""


def holder(out: Path, run_id: str) -> dict | None:
    """The live holder of ``run_id``'s claim (host, pid, since, heartbeat, epoch), or None when no live
    process holds it (never claimed, released, or its holder died)."""
    lock = claims_dir(out) / f"{run_id}.lock"
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    try:
        return json.loads((claims_dir(out) / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return {"host": "?", "pid": None, "since": None, "heartbeat": None, "epoch": None}


def heartbeat_age(info: dict) -> float | None:
    """Seconds since the holder's last heartbeat."""
    try:
        return time.time() - datetime.fromisoformat(info["heartbeat"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
