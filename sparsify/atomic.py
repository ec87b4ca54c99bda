"""Atomic output: write to a temporary file beside the destination, fsync, then rename into place.

Without ``force`` an existing destination is never replaced: the check runs before any work and
again at the end, where the file is linked into place (``os.link`` fails if the name exists). The
input file is never a valid destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sparsify.errors import OutputError


def check_destination(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Fail early (OutputError) if ``path`` exists without ``force`` or is one of ``inputs``."""
    path = Path(path)
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise OutputError(f"{path}: is the input file; sparsify never modifies its input")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    if not path.parent.exists():
        raise OutputError(f"{path.parent}: no such directory")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success move it to ``path``, else delete it."""
    path = Path(path)
    check_destination(path, force, inputs)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_error(path, exc) from None
    os.close(fd)
    temp = Path(name)
    os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield temp
        _fsync(temp)
        if force:
            check_destination(path, force, inputs)
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise OutputError(f"{path}: already exists (use --force to overwrite)") from None
            temp.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise _output_error(path, exc) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: permission denied")
    return OutputError(f"{path}: cannot write: {exc.strerror or exc}")
