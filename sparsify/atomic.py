"""Atomic output: write to a temporary file beside the destination, fsync, then rename into place.

Without ``force`` an existing destination is never replaced: the check runs before any work and
again at the end, where the file is linked into place (``os.link`` fails if the name exists). The
input file is never a valid destination.

The temporary file is named ``.{name}.sparsify-tmp-{pid}-{random}`` (``pid`` of the writing process),
so one that a killed run left behind is recognisable and attributable: the next :func:`atomic_output`
to the same destination removes those whose process no longer runs (on this host) and logs a warning
for each (logger ``sparsify.atomic``; the CLI prints it on stderr unless ``--quiet``). Files that
writers derive from the temporary name (a spool, a staging copy) end in ``.{suffix}`` and go the same way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from sparsify.errors import InputError, OutputError, SparsifyError

TEMP_MARK = ".sparsify-tmp-"
_TEMP_TAIL = re.compile(r"(?P<pid>[1-9][0-9]{0,8})-[0-9a-f]{8}(?:\..+)?")
"""What follows ``.{name}{TEMP_MARK}`` in a temporary name: the pid, the random part, any suffix."""

_log = logging.getLogger(__name__)

_OUTPUT_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (the file size limit was reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


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
    """Yield a temporary path in ``path``'s folder; on success move it to ``path``, else delete it.

    An OSError inside the block becomes an OutputError, unless it names one of ``inputs`` (reading
    the input failed): then an InputError.
    """
    path = Path(path)
    check_destination(path, force, inputs)
    remove_stale_temps(path)
    try:
        temp = _create_temp(path)
    except OSError as exc:
        raise _output_error(path, exc) from None
    with _discarded_on_failure(temp, path, inputs, _discard):
        yield temp
        _fsync(temp)
        _move_into_place(temp, path, force, inputs)
        _fsync_dir(path.parent)


def check_folder_destination(
    path: Path, force: bool, inputs: tuple[Path, ...] = (), replaceable: Callable[[Path], bool] | None = None
) -> None:
    """Fail early (OutputError) if the folder ``path`` exists without ``force`` (or, with it, is a
    folder that ``replaceable`` refuses: --force never deletes a folder of other files), is (or is
    inside, or holds) one of the inputs, or its parent does not exist."""
    path = Path(path)
    target = Path(os.path.abspath(path))
    for source in inputs:
        source = Path(os.path.abspath(source))
        if target == source or source in target.parents or target in source.parents:
            raise OutputError(f"{path}: is, holds or lies inside the input {source}; sparsify never modifies its input")
    if path.exists() and not force:
        raise OutputError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        if replaceable is None or not replaceable(path):
            raise OutputError(f"{path}: a folder of other files; --force replaces only what sparsify wrote there")
    if not path.parent.exists():
        raise OutputError(f"{path.parent}: no such directory")


@contextlib.contextmanager
def atomic_folder(
    path: Path, force: bool, inputs: tuple[Path, ...] = (), replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes ``path``'s place at once (a
    rename; with ``force`` an existing ``path`` is moved aside first and deleted after), else it is
    deleted. The files written inside are the caller's to fsync; the folders are fsynced here.
    """
    path = Path(path)
    check_folder_destination(path, force, inputs, replaceable)
    remove_stale_temps(path)
    try:
        temp = _create_temp(path, folder=True)
    except OSError as exc:
        raise _output_error(path, exc) from None
    with _discarded_on_failure(temp, path, inputs, _discard_tree):
        yield temp
        for folder, _, _ in os.walk(temp):
            _fsync_dir(Path(folder))
        check_folder_destination(path, force, inputs, replaceable)
        old = None
        if path.exists() or path.is_symlink():
            old = _create_temp(path, folder=True)
            os.rmdir(old)
            os.rename(path, old)
        try:
            os.rename(temp, path)
        except OSError:
            if old is not None:  # put back what was there: a failed run replaces nothing
                os.rename(old, path)
            raise
        _fsync_dir(path.parent)
        if old is not None:
            _discard_tree(old)


@contextlib.contextmanager
def _discarded_on_failure(temp: Path, path: Path, inputs: tuple[Path, ...], discard: Callable[[Path], None]):
    """Run the block; on any failure ``discard(temp)`` and restate an OSError or a writer's
    OutputError for the destination ``path`` (an input's read error as an InputError)."""
    try:
        yield
    except OSError as exc:
        discard(temp)
        raise _block_error(path, exc, inputs) from None
    except OutputError as exc:
        discard(temp)
        raise _restated(exc, temp, path) from exc.__cause__
    except BaseException:
        discard(temp)
        raise


@contextlib.contextmanager
def scratch_folder(path: Path, suffix: str = "spool") -> Iterator[Path]:
    """A temporary folder beside ``path`` for the files a run writes on the way (workers' spools),
    named like ``path``'s temporary files (so a killed run's is removed by the next one), deleted
    afterwards."""
    path = Path(path)
    try:
        folder = _create_temp(path, folder=True)
        named = folder.with_name(f"{folder.name}.{suffix}")
        os.rename(folder, named)
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        yield named
    finally:
        _discard_tree(named)


def _discard_tree(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def temp_prefix(path: Path) -> str:
    """How the names of ``path``'s temporary files begin."""
    return f".{Path(path).name}{TEMP_MARK}"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files for ``path`` whose writing process no longer runs; returns them.

    Each removal (or failure to remove) is logged as a warning. Files of running processes, and
    names that do not parse, are left alone.
    """
    path = Path(path)
    prefix = temp_prefix(path)
    try:
        names = sorted(entry.name for entry in os.scandir(path.parent) if entry.name.startswith(prefix))
    except OSError:
        return []  # an unreadable folder: nothing to clean that we could see
    removed = []
    for name in names:
        match = _TEMP_TAIL.fullmatch(name[len(prefix) :])
        if match is None or _process_alive(int(match["pid"])):
            continue
        stale = path.parent / name
        try:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)  # a folder archive's temporary folder
            else:
                stale.unlink()
        except FileNotFoundError:
            continue  # another run removed it first
        except OSError as exc:
            _log.warning("cannot remove %s, left by interrupted process %s: %s", stale, match["pid"], exc.strerror)
            continue
        _log.warning("removed %s, a temporary file left by interrupted process %s", stale, match["pid"])
        removed.append(stale)
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (True where that cannot be told)."""
    if os.name != "posix":
        return True  # on Windows os.kill would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        pass
    return True


def _create_temp(path: Path, folder: bool = False) -> Path:
    """Create an empty temporary file (or folder) for ``path`` beside it (permissions 0666/0777 less
    the umask)."""
    for _ in range(100):
        temp = path.with_name(f"{temp_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            if folder:
                os.mkdir(temp, 0o777)
            else:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def _move_into_place(temp: Path, path: Path, force: bool, inputs: tuple[Path, ...]) -> None:
    if force:
        check_destination(path, force, inputs)
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise OutputError(f"{path}: already exists (use --force to overwrite)") from None
    temp.unlink()


def _discard(temp: Path) -> None:
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)


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


def _block_error(path: Path, exc: OSError, inputs: tuple[Path, ...]) -> SparsifyError:
    """The user's error for an OSError inside the block: reading an input (it names one) or writing."""
    if isinstance(exc.filename, (str, bytes, os.PathLike)):
        for source in inputs:
            if _same_path(exc.filename, source):
                return InputError(f"{source}: cannot read: {exc.strerror or exc}")
    return _output_error(path, exc)


def _same_path(a, b) -> bool:
    if os.path.abspath(os.fsdecode(a)) == os.path.abspath(os.fsdecode(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _restated(exc: OutputError, temp: Path, path: Path) -> OutputError:
    """A writer's OutputError, which names the temporary file, restated for the destination."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in _OUTPUT_REASONS:
        return _output_error(path, cause)
    return OutputError(str(exc).replace(str(temp), str(path)))


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = _OUTPUT_REASONS.get(exc.errno)
    return OutputError(f"{path}: {reason}" if reason else f"{path}: cannot write: {exc.strerror or exc}")
