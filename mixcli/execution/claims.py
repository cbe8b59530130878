"""Claims: which process trains a run, so that any number of ``mixcli run`` processes (terminals, a SLURM
job array, machines sharing the output directory) train every run exactly once.

A claim is an exclusive OS lock (``flock``) on ``OUT/claims/<run_id>.lock``, taken without waiting. The
kernel releases it when its holder dies, SIGKILL included, so a run whose holder died is free to be taken
over (and resumes from its checkpoint). The lock is held by the process that trains the run for as long
as it trains it. Beside the lock, ``OUT/claims/<run_id>.json`` records the holder (host, pid, since) and a
heartbeat refreshed every :data:`HEARTBEAT_S` seconds with the epoch reached, which ``mixcli status``
shows; a heartbeat older than :data:`STALE_S` means the holder is stalled (SIGSTOPped, hung, its machine
frozen): it still holds the run, but makes no progress.

The lock survives a deleted or replaced claims folder (a cleanup script, ``rsync --delete``): every
:data:`CHECK_S` seconds the holder checks that the file at ``OUT/claims/<run_id>.lock`` is still the one it
locked (``st_dev``/``st_ino``) and otherwise puts a locked file of its own back there (rename over the
path). The lock file holds its holder's identity and the time it took the run; a process that took the
run meanwhile (it found no lock) is the junior: it gives the run up when it sees the senior's file, before
it writes anything when it took the run within :data:`SETTLE_S` seconds of finding a fresh lock file for a
run that had already started, and otherwise at its next training step (:attr:`Claim.lost`), without
recording anything. A damaged claims folder (a file, unwritable, a lock that is a folder or a link) is one
line naming the path and what to fix.

Shared filesystems: Linux NFS (v3 with lockd, v4) and Lustre/GPFS mounted with locking enabled implement
``flock`` across machines. On a filesystem without working locks (e.g. Lustre mounted ``-o noflock``)
taking the lock fails and ``mixcli run`` says so instead of risking double training.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import fs
from ..errors import MixcliError

HEARTBEAT_S = 10.0   # how often the holder file's heartbeat is refreshed
STALE_S = 3 * HEARTBEAT_S  # a heartbeat older than this: the holder is stalled (stopped or hung)
CHECK_S = 1.0        # how often a holder checks that its lock file is still at its path
SETTLE_S = 4.0       # how long a process that re-created a started run's lock file waits for a senior holder
RESERVE_BYTES = 1 << 20  # disk space kept per claim, freed to record the run when the disk is full
MAX_HOLDER_FILE = 64 << 10  # a holder file larger than this is not read (crafted)
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def claims_dir(out: Path) -> Path:
    return Path(out) / "claims"


class ClaimLost(Exception):
    """This process lost its claim to a holder that took the run before it (after the claims folder was
    deleted or replaced): it stops without recording anything."""


def _damaged(path: Path, exc: OSError | None, what: str) -> MixcliError:
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return MixcliError(f"{path}: {what}{why}; mixcli records there which process trains each run. {fix_of(path, exc)}")


def fix_of(path: Path, exc: OSError | None) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Make {path} writable (chmod u+rwx, or remount read-write), or choose another --out"
    if code == errno.ENOSPC:
        return "Free disk space, or choose another --out"
    return f"Remove {path} (mixcli makes it again), or choose another --out"


def open_claims(out: Path, create: bool = True) -> int:
    """A descriptor of ``OUT/claims`` (a real folder, made when missing), or one line saying what is wrong."""
    where = claims_dir(out)
    try:
        return fs.open_dir(Path(out), ["claims"], create=create)
    except fs.UnsafePath:
        raise _damaged(where, None, "not a folder (a file or a link)") from None
    except FileNotFoundError:
        if not create:
            raise
        raise MixcliError(f"{out}: the output directory does not exist (it went away?); make it, or choose "
                          "another --out") from None
    except OSError as exc:
        raise _damaged(where, exc, "cannot be opened or made") from None


def _key(ident: dict) -> tuple:
    """Seniority of a lock file's identity: who took the run first (then host and pid break ties)."""
    t = ident.get("t")
    return (float(t) if isinstance(t, (int, float)) and math.isfinite(t) else math.inf,
            str(ident.get("host")), str(ident.get("pid")))


class Claim:
    """An exclusive claim on one run; ``acquire()`` never waits (but for :data:`SETTLE_S` seconds after a
    deleted claims folder)."""

    def __init__(self, out: Path, run_id: str) -> None:
        self.out = Path(out)
        self.run_id = run_id
        self.lock_path = claims_dir(out) / f"{run_id}.lock"
        self.info_path = claims_dir(out) / f"{run_id}.json"
        self.name = f"{run_id}.lock"
        self._fd: int | None = None
        self._ident: tuple | None = None          # (st_dev, st_ino) of the file we locked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reserve: int | None = None          # descriptor of the reserve file (see free_reserve)
        self.info: dict = {}
        self.me: dict = {}                        # what our lock file says: host, pid, t (when we took it)
        self.lost: str | None = None              # why this claim went to a senior holder (see ClaimLost)

    # ---------------------------------------------------------------------------------------- taking it
    def _open_lock(self, dfd: int) -> tuple[int, bool]:
        """(descriptor, created) of the lock file, opened without following a link."""
        for _ in range(10):
            try:
                return os.open(self.name, os.O_RDWR | _FLAGS, dir_fd=dfd), False
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._bad_lock(exc) from None
            try:
                return os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, fs.FILE_MODE,
                               dir_fd=dfd), True
            except FileExistsError:
                continue  # made by another process meanwhile: opened above
            except OSError as exc:
                raise _damaged(self.lock_path.parent, exc, "cannot hold a new lock file") from None
        raise _damaged(self.lock_path, None, "keeps appearing and vanishing")

    def _bad_lock(self, exc: OSError) -> MixcliError:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP, errno.ENOTDIR):
            what = "a symbolic link" if exc.errno == errno.ELOOP else "not a plain file"
            return MixcliError(f"{self.lock_path}: the run's lock file is {what}; it must be a plain file "
                               f"mixcli made. Remove {self.lock_path} (mixcli makes it again)")
        return _damaged(self.lock_path, exc, "the run's lock file cannot be opened")

    def acquire(self, where: dict | None = None) -> bool:
        """Take the claim; False when a live process holds it. ``where``: the holder's placement
        (:func:`.placement.placement`: SLURM job, node, Ray node and task), recorded in the holder file."""
        dfd = open_claims(self.out)  # a real folder, never a planted link (mixcli.fs)
        try:
            fd, created = self._open_lock(dfd)
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
        st = os.fstat(fd)
        self._fd, self._ident, self.lost = fd, (st.st_dev, st.st_ino), None
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "t": time.time()}
        _write_identity(fd, self.me)
        if created and (self.out / "runs" / f"{self.run_id}.parquet").exists():
            # the lock file was missing for a run that had started: its claims folder may have been deleted
            # while a holder trains it. That holder puts its own lock file back within CHECK_S seconds.
            deadline = time.monotonic() + SETTLE_S
            while time.monotonic() < deadline and self.lost is None:
                time.sleep(min(CHECK_S / 2, max(0.0, deadline - time.monotonic())))
                self.verify()
            if self.lost is not None:
                self._close()
                return False
        self.info = {"host": self.me["host"], "pid": self.me["pid"], "since": _now(), "heartbeat": _now(),
                     "epoch": 0, **(where or {})}
        self._write()
        self._make_reserve()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id}", daemon=True)
        self._thread.start()
        return True

    # ------------------------------------------------------------------------------------ keeping it
    def verify(self) -> bool:
        """Whether this process still holds the run: its lock file is the one at the lock's path, or it
        puts one back (the claims folder was deleted or replaced). False (and :attr:`lost` says why) when
        a process that took the run before it holds the file there now."""
        if self._fd is None or self.lost is not None:
            return self.lost is None
        try:
            dfd = open_claims(self.out)
        except MixcliError:
            return True  # damaged: nobody can take the run there either; this holder goes on
        try:
            try:
                st = os.stat(self.name, dir_fd=dfd, follow_symlinks=False)
                there = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                there = None
            if there == self._ident:
                return True
            if there is not None:
                other = _held_by(dfd, self.name)
                if other is not None and _key(other) < _key(self.me):
                    self.lost = (f"run {self.run_id} is trained by {other.get('host')}:{other.get('pid')}, which "
                                 "took it first (this process took it after its claims folder was deleted "
                                 "or replaced); left to that process, nothing recorded")
                    return False
            self._put_back(dfd)
            return True
        except OSError:
            return True  # e.g. a read-only or full claims folder: nobody can take the run there either
        finally:
            os.close(dfd)

    def _put_back(self, dfd: int) -> None:
        """Put a lock file of ours back at the lock's path: a new file, locked, with our identity, renamed
        over whatever is there (a replaced file, or the junior's)."""
        tmp = f".{self.name}.{secrets.token_hex(4)}{fs.TMP_SUFFIX}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, fs.FILE_MODE, dir_fd=dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_identity(fd, self.me)
            if self.info:  # the holder file first, so that it is there once the lock is (not while settling)
                self.info["heartbeat"] = _now()
                self._write()
            os.replace(tmp, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        old, self._fd = self._fd, fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        if old is not None:
            os.close(old)

    def update(self, write: bool = False, **fields) -> None:
        """Record progress (e.g. ``epoch=3``) in the holder file at the next heartbeat (``write``: now; a
        driver that does not hear the worker directly, Ray's or SLURM's, follows the epochs there)."""
        self.info.update(fields)
        if write:
            self.info["heartbeat"] = _now()
            self._write()

    def _write(self) -> None:
        if self.lost is not None:
            return  # the holder file is the senior holder's
        from ..results.store import atomic_write

        text = json.dumps(self.info).encode()
        try:
            atomic_write(self.info_path, lambda f: f.write(text), root=self.info_path.parent.parent)
        except (OSError, MixcliError):
            pass  # the heartbeat is information only; a full disk or a damaged folder must not kill the run

    def _beat(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(CHECK_S):
            try:
                if not self.verify():
                    return
            except Exception:  # noqa: BLE001 - the check must never end the heartbeat
                pass
            if time.monotonic() - last >= HEARTBEAT_S:
                last = time.monotonic()
                self.info["heartbeat"] = _now()
                self._write()

    # ------------------------------------------------------------------------------ the disk reserve
    def _make_reserve(self) -> None:
        """Keep :data:`RESERVE_BYTES` of disk for this run (``claims/.<run_id>.reserve``): when the disk
        fills up while it trains, :meth:`free_reserve` gives them back so that its failure can be recorded."""
        try:
            dfd = open_claims(self.out, create=False)
        except (MixcliError, OSError):
            return
        try:
            fd = os.open(f".{self.run_id}.reserve", os.O_RDWR | os.O_CREAT | _FLAGS, fs.FILE_MODE, dir_fd=dfd)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            except OSError:
                os.close(fd)
                os.unlink(f".{self.run_id}.reserve", dir_fd=dfd)
                return
            self._reserve = fd
        except OSError:
            pass  # no space to keep: the failure is recorded if the disk allows
        finally:
            os.close(dfd)

    def free_reserve(self) -> bool:
        """Give the reserved disk space back (True when there was some)."""
        if self._reserve is None:
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            fs.unlink(self.lock_path.parent / f".{self.run_id}.reserve", self.out)
        except (OSError, MixcliError):
            pass
        return True

    # ------------------------------------------------------------------------------------ letting go
    def _close(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.free_reserve()
        if self.lost is None:
            try:
                fs.unlink(self.info_path, self.out)
            except (OSError, MixcliError):
                pass
        self._close()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _write_identity(fd: int, me: dict) -> None:
    """Our identity into the lock file we hold (who took the run, and when: see :func:`_key`)."""
    try:
        data = json.dumps(me).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # a full disk: the lock still holds; a contest then counts this holder as the junior


def _locked(fd: int) -> bool:
    """Whether a live process holds the lock on open file ``fd`` (a shared lock cannot be taken)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _held_by(dfd: int, name: str) -> dict | None:
    """The identity in lock file ``name`` when a live process holds it; None when nobody does."""
    try:
        fd = os.open(name, os.O_RDONLY | _FLAGS, dir_fd=dfd)
    except OSError:
        return None
    try:
        if not _locked(fd):
            return None
        try:
            ident = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError, RecursionError):
            ident = {}
        return ident if isinstance(ident, dict) else {}
    finally:
        os.close(fd)


LOCAL_LOCKS = ("local_lock=flock", "local_lock=all", "nolock", "localflock")


def check_other_host(info_path: Path) -> None:
    """Just after this process got a run's lock: a holder file naming another host whose heartbeat is
    fresh means that host holds the same lock, so the filesystem's locks do not reach across machines
    (NFS mounted ``local_lock=flock``/``nolock``, Lustre ``localflock``). Refused: training would double."""
    info, _ = read_info(info_path)
    if info is None:
        return
    age = heartbeat_age(info)
    if info.get("host") in (None, "?", socket.gethostname()) or age is None or age > STALE_S:
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


UNKNOWN = {"host": "?", "pid": None, "since": None, "heartbeat": None, "epoch": None}
_TEXT = ("host", "since", "heartbeat", "slurm_job", "node", "ray_node", "ray_task")
_COUNTS = ("pid", "epoch", "epochs", "steps")
MAX_COUNT = 1 << 31


def clean_info(raw) -> tuple[dict, list[str]]:
    """A holder file's content as :func:`holder` returns it: the known keys with the expected types (text
    without control characters, counts in [0, 2**31)), and the keys that were not (dropped)."""
    from ..results.store import clean_text

    if not isinstance(raw, dict):
        return dict(UNKNOWN), [f"not a JSON object ({type(raw).__name__})"]
    info, bad = dict(UNKNOWN), []
    for key in _TEXT:
        v = raw.get(key)
        if v is None:
            continue
        if isinstance(v, str) and len(v) <= 256:
            info[key] = clean_text(v)
        else:
            bad.append(key)
            info[key] = "?" if key == "host" else None
    for key in _COUNTS:
        v = raw.get(key)
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_COUNT:
            info[key] = v
        else:
            bad.append(key)
            info[key] = None
    last = raw.get("last")
    if isinstance(last, dict):
        info["last"] = {clean_text(str(k))[:64]: float(v) for k, v in list(last.items())[:16]
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    elif last is not None:
        bad.append("last")
    return info, bad


def read_info(info_path: Path) -> tuple[dict | None, str | None]:
    """(holder file content checked by :func:`clean_info`, or None when missing; what was wrong with it)."""
    try:
        fd = os.open(info_path, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return dict(UNKNOWN), f"cannot be read ({exc.strerror})"
    try:
        data = os.read(fd, MAX_HOLDER_FILE + 1)
    except OSError as exc:
        return dict(UNKNOWN), f"cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    if len(data) > MAX_HOLDER_FILE:
        return dict(UNKNOWN), f"larger than {MAX_HOLDER_FILE >> 10} KiB"
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return dict(UNKNOWN), "not JSON"
    info, bad = clean_info(raw)
    if bad:
        return info, bad[0] if bad[0].startswith("not ") else f"bad value of {', '.join(bad)}"
    return info, None


def holder(out: Path, run_id: str, warn: Callable[[str], None] | None = None) -> dict | None:
    """The live holder of ``run_id``'s claim (host, pid, since, heartbeat, epoch, ...), or None when no live
    process holds it (never claimed, released, or its holder died). A holder file that is not what mixcli
    writes is shown as far as it can be (``?`` for the rest) and reported through ``warn``."""
    lock = claims_dir(out) / f"{run_id}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY | _FLAGS)
    except OSError:
        return None  # missing, or not a plain file (acquire says what is wrong with it)
    try:
        if not _locked(fd):
            return None
    finally:
        os.close(fd)
    info_path = claims_dir(out) / f"{run_id}.json"
    info, problem = read_info(info_path)
    if problem and warn is not None:
        warn(f"{info_path}: holder file {problem}; shown as far as it can be")
    return info if info is not None else dict(UNKNOWN)


def heartbeat_age(info: dict) -> float | None:
    """Seconds since the holder's last heartbeat (0 for one in the future: another host's clock)."""
    try:
        return max(0.0, time.time() - datetime.fromisoformat(info["heartbeat"]).timestamp())
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def stalled_for(info: dict) -> float | None:
    """Seconds since the heartbeat of a holder that stopped beating (older than :data:`STALE_S`), else None."""
    age = heartbeat_age(info)
    return age if age is not None and age > STALE_S else None
