"""Atomic file writes: a temporary file in the target's folder, fsync, then a rename.

A crash or an exception mid-write leaves the previous file untouched and no temporary file
behind (os.replace is atomic on POSIX and Windows for files on one file system). A process
killed mid-write (SIGKILL, a power cut) cannot remove its temporary file: the temporary's
name carries the writer's process id, and the next write of the same target removes those
whose process is gone and which has not been written for 15 minutes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_write_bytes", "writable_target"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def writable_target(path) -> Path:
    """``path`` as a Path, checked as a file to write: not a folder, and no file where one of
    its folders would be (the folders that do not exist yet are created by the writer).

    Raises
    ------
    IsADirectoryError
        ``path`` is a folder.
    NotADirectoryError
        A file stands where one of its folders would be; the message names it.
    PermissionError
        The nearest existing folder cannot be written to (a read-only file system, or
        another user's folder).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    for folder in path.absolute().parents:
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):  # read-only, or another user's
                raise PermissionError(f"cannot write {path}: the folder {folder} is not writable")
            break
    return path


@contextlib.contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears, complete, only when the block succeeds.

    Raises
    ------
    OSError
        From the file system; the target is then unchanged.
    """
    path = writable_target(path)
    if path.is_symlink():  # write through the link, as open() does, not over the link
        try:
            path = Path(os.path.realpath(path, strict=True))
        except FileNotFoundError:  # a dangling link: its target is created, as open() does
            path = Path(os.path.realpath(path))
        except (OSError, RuntimeError) as err:  # a loop of links
            raise OSError(errno.ELOOP, f"cannot write {path}: a loop of symbolic links") from err
        path = writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    try:  # the file keeps its mode when replaced; a new one gets the usual mode
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno and err.filename is None:  # a full disk
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


# A temporary file left by a writer that was killed: ".<name>.<pid>.<8 of mkstemp's>.tmp",
# untouched for this long (a live writer's file, even one whose process id means nothing
# here, in another container or on another host sharing the folder, is being written).
_ORPHAN_AGE = 15 * 60  # seconds
_ORPHAN = re.compile(r"(\d+)\.[a-z0-9_]{8}\.tmp")


def _remove_orphans(path: Path) -> None:
    """Removes the temporary files of earlier writes of ``path`` whose writer was killed:
    ``.<name>.<pid>.<random>.tmp`` where no process ``pid`` runs any more and which has not
    been written for 15 minutes (a live writer's stays, as does one of another user's
    process)."""
    prefix = f".{path.name}."
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = entry.name.startswith(prefix) and _ORPHAN.fullmatch(entry.name[len(prefix) :])
            if not match or int(match[1]) == os.getpid():
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < _ORPHAN_AGE:
                    continue
                os.kill(int(match[1]), 0)
            except ProcessLookupError:  # the writer is gone
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except (OverflowError, OSError):
                pass  # alive (someone else's process), not a process id, or gone meanwhile


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(data)
