"""Writing and deleting under an output folder without following a symbolic link mixcli did not make.

Result folders are often shared (a SLURM array, a lab's ``/shared/results``): whoever can write into ``OUT``
could plant ``OUT/jobs/<run_id> -> /home/someone`` or ``traceback.txt -> ~/.bashrc``. Every file mixcli
writes or deletes under ``OUT`` goes through this module, which walks from ``OUT`` down with directory file
descriptors (``openat``-style: each component opened with ``O_NOFOLLOW | O_DIRECTORY``, created with
``mkdirat`` when missing), writes a temporary file with ``O_CREAT | O_EXCL | O_NOFOLLOW``, and renames it
over the target inside that directory (a rename replaces a planted link itself, never the file it points
to). ``OUT`` itself may be a link (results on another disk); nothing below it may. A link met on the way
is a :class:`UnsafePath` error that names it.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import MixcliError

TMP_SUFFIX = ".tmp"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(MixcliError):
    """A path under the output folder that is a symbolic link (or not a folder where one is needed)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def _relative(root: Path, path: Path) -> list[str]:
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise UnsafePath(f"{path} is outside the output folder {root}; mixcli writes nowhere else") from None
    if any(p in ("..", "") for p in rel.parts):
        raise UnsafePath(f"{path}: '..' is not allowed below the output folder {root}")
    return list(rel.parts)


def open_dir(root: Path, parts: list[str], create: bool = True) -> int:
    """A file descriptor of ``root/parts...``, every component below ``root`` a real folder (created when
    missing and ``create``). The caller closes it."""
    fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # OUT itself may be a link
    where = Path(root)
    try:
        for name in parts:
            where = where / name
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # made by another process meanwhile: opened (and checked) below
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    what = "a symbolic link" if os.path.islink(where) else "not a folder"
                    raise UnsafePath(f"{where} is {what}; mixcli writes only into folders of the output "
                                     "folder it made itself (remove it, or choose another --out)") from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: Path, write: Callable[[Any], Any], root: Path | None = None) -> None:
    """Write ``path`` through a hidden temporary file in its folder (fsync, then rename over ``path``); the
    file gets the umask's permissions. With ``root`` (the output folder), no component below ``root`` is
    followed if it is a link (see the module docstring); without it, a plain write."""
    path = Path(path)
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        dfd = os.open(path.parent, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    else:
        dfd = open_dir(Path(root), _relative(Path(root), path.parent))
    try:
        for _ in range(100):
            tmp = f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) |
                             getattr(os, "O_CLOEXEC", 0), FILE_MODE, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 name collisions in a row
            raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def write_text(path: Path, text: str, root: Path | None = None) -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), root)


def unlink(path: Path, root: Path, missing_ok: bool = True) -> None:
    """Delete ``path`` (a link is deleted itself, never what it points to) without following links above it."""
    path = Path(path)
    try:
        dfd = open_dir(Path(root), _relative(Path(root), path.parent), create=False)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.unlink(path.name, dir_fd=dfd)
    except FileNotFoundError:
        if not missing_ok:
            raise
    finally:
        os.close(dfd)


def entries(folder: Path, root: Path) -> Iterator[str]:
    """The names in ``folder`` (none when it does not exist), read without following links below ``root``."""
    try:
        dfd = open_dir(Path(root), _relative(Path(root), Path(folder)), create=False)
    except FileNotFoundError:
        return iter(())
    try:
        return iter(os.listdir(dfd))
    finally:
        os.close(dfd)
