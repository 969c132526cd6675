"""Atomic file writes: a temporary file in the target's folder, fsync, then a rename.

A crash or an exception mid-write leaves the previous file untouched and no temporary file
behind (os.replace is atomic on POSIX and Windows for files on one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    for folder in path.absolute().parents:
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(data)
