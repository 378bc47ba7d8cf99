"""Writing files so that nothing is lost: every file the library writes goes through ``atomic_write``.

The new contents go to a temporary file in the target's folder, are flushed and fsynced, and only then
replace the target with ``os.replace`` (atomic on POSIX and Windows within one file system). Readers see
the old file or the new one, never half of one; a failed write (disk full, a file-size limit, an
exception or Ctrl-C in the middle) removes the temporary file and leaves the target as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _process_umask() -> int:
    # Read once, at import: os.umask can only be read by setting it, which is not thread-safe later on.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None):
    """``with atomic_write(path) as f: ...``: f is a file object open on a temporary file beside path;
    path is replaced by it when the block ends without an exception, and left untouched otherwise.

    mode is "wb" or "w" (then ``encoding``, default UTF-8). The new file gets the permissions a plain
    ``open(path, "w")`` would give it (an existing target's mode is kept). A symbolic link at path is
    followed: its target is replaced and the link kept. The folder must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(os.path.realpath(path))
    try:
        permissions = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        permissions = 0o666 & ~_UMASK
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, permissions)
        else:
            os.chmod(tmp, permissions)
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(target.parent)


def write_bytes(path, data: bytes) -> Path:
    """path's contents replaced by data, atomically (see atomic_write); returns path as a Path."""
    with atomic_write(path, "wb") as file:
        file.write(data)
    return Path(path)


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """path's contents replaced by text, atomically (see atomic_write); returns path as a Path."""
    with atomic_write(path, "w", encoding=encoding) as file:
        file.write(text)
    return Path(path)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it (POSIX: fsync the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)
