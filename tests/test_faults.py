"""Faults: kill -9 at random moments, a full disk, a read-only destination, an input failing mid-run.

Whatever happens, the destination is absent, the previous file intact or the complete output; the
input is unchanged; temporary files left by a killed run are named after their destination and
process, and the next run removes them (and says so).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import random
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

import sparsify
import sparsify.work
from sparsify import cli
from sparsify.archive import writer as archive_writer
from sparsify.atomic import atomic_output
from sparsify.errors import InputError, OutputError
from sparsify.io import safetensors_file

SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "digits_mlp.safetensors"
SAMPLE_H5 = SAMPLE.with_suffix(".h5")
KILL_RUNS = 120  # per command: compress and decompress
POSIX = os.name == "posix"
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
needs_posix = pytest.mark.skipif(not POSIX, reason="needs POSIX rlimits, uids and signals")


def temp_pattern(dest: Path, pid: int | str = r"\d+") -> str:
    """The name of ``dest``'s temporary file written by process ``pid`` (or its spool's)."""
    return rf"\.{re.escape(dest.name)}\.sparsify-tmp-{pid}-[0-9a-f]{{8}}(\.spool-\w{{8}})?"


def removal_report(leftover: Path) -> str:
    """The warning for removing ``leftover``, a temporary file of an ended process."""
    pid = leftover.name.split(".sparsify-tmp-")[1].split("-")[0]
    return f"removed {leftover}, a temporary file left by interrupted process {pid}"


def sha(path: Path) -> str:
    """The file's digest (SHA-256: the test's own, to see a file unchanged; not the format's checksum)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    """The pid of a process that has ended (forked, exited, reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def fork(work) -> int:
    """Run ``work()`` in a forked child, which exits 0 if it returned and 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 30.0) -> int:
    """The exit code of child ``pid``; kills it (and fails) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} did not finish within {timeout} s")
        time.sleep(0.0005)


@pytest.fixture
def model(tmp_path) -> Path:
    source = tmp_path / "m.safetensors"
    shutil.copyfile(SAMPLE, source)
    return source


@pytest.fixture
def archive(model) -> Path:
    sparsify.compress(model)
    return model.with_suffix(".sparsify")


# -- temporary names and their cleanup ---------------------------------------------------------


def test_temporary_file_is_named_after_destination_and_process(tmp_path):
    dest = tmp_path / "out.bin"
    mask = os.umask(0o027)
    try:
        with atomic_output(dest, force=False) as temp:
            assert re.fullmatch(rf"\.out\.bin\.sparsify-tmp-{os.getpid()}-[0-9a-f]{{8}}", temp.name)
            assert temp.parent == tmp_path
            temp.write_bytes(b"data")
    finally:
        os.umask(mask)
    assert dest.read_bytes() == b"data"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # the usual permissions: 0666 less the umask
    assert os.listdir(tmp_path) == ["out.bin"]


@needs_fork
def test_leftovers_of_ended_processes_are_removed_and_reported(tmp_path, caplog):
    dead, live = dead_pid(), os.getpid()
    names = [
        f".out.bin.sparsify-tmp-{dead}-0123abcd",
        f".out.bin.sparsify-tmp-{dead}-0123abcd.skeleton",  # a writer's file named after the temporary one
        f".out.bin.sparsify-tmp-{live}-0123abcd",  # a run in progress
        f".other.bin.sparsify-tmp-{dead}-0123abcd",  # another destination's
        ".out.bin.sparsify-tmp-unknown",  # not a name sparsify makes
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="sparsify"), atomic_output(tmp_path / "out.bin", force=False) as temp:
        temp.write_bytes(b"data")
    assert caplog.messages == [removal_report(tmp_path / names[0]), removal_report(tmp_path / names[1])]
    assert caplog.messages[0] == f"removed {tmp_path / names[0]}, a temporary file left by interrupted process {dead}"
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:] + ["out.bin"])


@needs_fork
@pytest.mark.parametrize("quiet", [False, True])
def test_cli_reports_each_removed_leftover_unless_quiet(model, capsys, quiet):
    leftover = model.parent / f".m.sparsify.sparsify-tmp-{dead_pid()}-0123abcd"
    leftover.write_bytes(b"partial")
    assert cli.run(["compress", str(model)] + ["-q"] * quiet) == 0
    lines = [f"sparsify: {removal_report(leftover)}", f"wrote {model.with_suffix('.sparsify')}"]
    assert capsys.readouterr().err.splitlines() == ([] if quiet else lines)
    assert sorted(os.listdir(model.parent)) == ["m.safetensors", "m.sparsify"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_TMPFILE is Linux's")
def test_archive_spool_has_no_name(tmp_path):
    # An unnamed spool (O_TMPFILE) is one kill -9 cannot leave behind.
    writer = archive_writer.ArchiveWriter(tmp_path / "a.sparsify")
    try:
        assert os.listdir(tmp_path) == []
    finally:
        writer.close()


# -- kill -9 -----------------------------------------------------------------------------------


def typical_duration(work) -> float:
    """Median seconds from fork to exit of an uninterrupted forked run of ``work``."""
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        assert wait(fork(work)) == 0
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def kill_at_random(work, dest: Path, reference: bytes, seed: int) -> Counter:
    """KILL_RUNS forked runs of ``work(force)``, each killed after a random delay; checks every outcome.

    Odd runs write with force over a previous file, even ones into an absent destination. Returns
    how the runs ended: destination absent, previous file, complete output; and runs leaving leftovers.
    """
    rng = random.Random(seed)
    previous = b"the previous file\n"
    typical = typical_duration(lambda: work(True))
    before = set(os.listdir(dest.parent)) - {dest.name}
    outcomes, killed = Counter(), set()
    for run in range(KILL_RUNS):
        force = run % 2 == 1
        if force:
            dest.write_bytes(previous)
        else:
            dest.unlink(missing_ok=True)
        pid = fork(lambda: work(force))  # noqa: B023 - called at once, in the child
        time.sleep(rng.uniform(0, typical))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed.add(str(pid))
        content = dest.read_bytes() if dest.exists() else None
        expected = {None: "absent", reference: "complete"} | ({previous: "previous"} if force else {})
        assert content in expected, f"run {run}: a partial destination of {len(content)} bytes"
        outcomes[expected[content]] += 1
        leftovers = set(os.listdir(dest.parent)) - before - {dest.name}
        for name in leftovers:
            match = re.fullmatch(temp_pattern(dest, r"(\d+)"), name)
            assert match and match[1] in killed, f"run {run}: unexpected file {name}"
        outcomes["leftovers"] += bool(leftovers)
    return outcomes


def check_next_run_cleans(run, dest: Path, reference: bytes, caplog) -> None:
    """An uninterrupted run after the kills: leftovers removed, one warning each, the output complete."""
    leftovers = sorted(p for p in dest.parent.iterdir() if re.fullmatch(temp_pattern(dest), p.name))
    before = set(os.listdir(dest.parent)) - {p.name for p in leftovers}
    with caplog.at_level("WARNING", logger="sparsify"):
        run()
    assert caplog.messages == [removal_report(p) for p in leftovers]
    assert set(os.listdir(dest.parent)) == before | {dest.name}
    assert dest.read_bytes() == reference


@needs_fork
def test_kill_9_during_compress(model, caplog):
    dest = model.with_suffix(".sparsify")
    source_hash = sha(model)
    sparsify.compress(model, dest)
    reference = dest.read_bytes()
    outcomes = kill_at_random(lambda force: sparsify.compress(model, dest, force=force), dest, reference, seed=1)
    assert outcomes["absent"] + outcomes["previous"] > 0 and outcomes["leftovers"] > 0, outcomes
    check_next_run_cleans(lambda: sparsify.compress(model, dest, force=True), dest, reference, caplog)
    assert sha(model) == source_hash


@needs_fork
def test_kill_9_during_decompress(archive, caplog):
    dest = archive.parent / "restored.safetensors"
    archive_hash = sha(archive)
    reference = SAMPLE.read_bytes()
    outcomes = kill_at_random(lambda force: sparsify.decompress(archive, dest, force=force), dest, reference, seed=2)
    assert outcomes["absent"] + outcomes["previous"] > 0 and outcomes["leftovers"] > 0, outcomes
    check_next_run_cleans(lambda: sparsify.decompress(archive, dest, force=True), dest, reference, caplog)
    assert sha(archive) == archive_hash


# -- a full disk -------------------------------------------------------------------------------


class FullDisk:
    """A file on a disk with ``room`` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._file.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")  # copies in the kernel would go around the full disk

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def fill_disk(monkeypatch, target: str, room: int) -> None:
    """Make the writes of ``target`` (the archive's spool or file, a safetensors output) hit a full disk."""
    if target == "spool":
        real = tempfile.TemporaryFile
        monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: FullDisk(real(**kw), room))
        return
    module = archive_writer if target == "archive" else safetensors_file

    def full_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        return FullDisk(file, room) if "w" in mode else file

    monkeypatch.setattr(module, "open", full_open, raising=False)


def folder_state(folder: Path) -> dict[str, str]:
    """The files of ``folder`` (not its subfolders), each with its hash."""
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("room", [0, 50_000])
@pytest.mark.parametrize("target", ["spool", "archive"])
def test_compress_on_a_full_disk(model, monkeypatch, target, room):
    before = folder_state(model.parent)
    fill_disk(monkeypatch, target, room)
    with pytest.raises(OutputError) as caught:
        sparsify.compress(model)
    assert str(caught.value) == f"{model.with_suffix('.sparsify')}: no space left on the device"
    assert folder_state(model.parent) == before


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("room", [0, 100_000])
def test_decompress_on_a_full_disk(archive, monkeypatch, room, force):
    dest = archive.parent / "restored.safetensors"
    if force:
        dest.write_bytes(b"the previous file\n")
    before = folder_state(archive.parent)
    fill_disk(monkeypatch, "safetensors", room)
    with pytest.raises(OutputError) as caught:
        sparsify.decompress(archive, dest, force=force)
    assert str(caught.value) == f"{dest}: no space left on the device"
    assert folder_state(archive.parent) == before


@pytest.fixture(params=["conversion", "rebuild"])
def hdf5_job(request, tmp_path) -> tuple[Path, Path, int]:
    """``(archive, destination, size of the complete output)`` of a decompression to HDF5: a conversion
    from safetensors (a new file), or a rebuild of an HDF5 source (from its skeleton)."""
    source = tmp_path / ("m.safetensors" if request.param == "conversion" else "m.h5")
    shutil.copyfile(SAMPLE if request.param == "conversion" else SAMPLE_H5, source)
    sparsify.compress(source)
    archive = source.with_suffix(".sparsify")
    dest = tmp_path / "restored.h5"
    size = sparsify.decompress(archive, dest, format="hdf5").stat().st_size
    dest.unlink()
    return archive, dest, size


def decompress_with_size_limit(archive: Path, dest: Path, limit: int, force: bool) -> tuple[int, str, str]:
    """``sparsify.decompress(archive, dest, format="hdf5")`` in a forked child whose files may not grow
    past ``limit`` bytes (writes beyond fail with EFBIG, as on a full disk with ENOSPC): its exit code
    (0 done, 4 OutputError, 1 anything else, -11 a segfault), the error and what it printed on stderr.

    HDF5 writes through its own C calls, so a full disk cannot be faked by patching ``open`` as for the
    other formats (:func:`fill_disk`): the size limit is the in-process way to make its writes fail."""
    message_r, message_w = os.pipe()  # pipes, unlike files, have no size limit
    stderr_r, stderr_w = os.pipe()

    def work() -> None:
        import resource

        os.dup2(stderr_w, 2)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            sparsify.decompress(archive, dest, format="hdf5", force=force)
        except OutputError as exc:
            os.write(message_w, str(exc).encode())
            os._exit(4)

    pid = fork(work)
    os.close(message_w)
    os.close(stderr_w)
    code = wait(pid)
    with os.fdopen(message_r) as message, os.fdopen(stderr_r) as stderr:
        return code, message.read(), stderr.read()


@needs_fork
@needs_posix
@pytest.mark.parametrize("force", [False, True])
def test_decompress_to_hdf5_at_a_size_limit(hdf5_job, force):
    # A limit at every stage: the skeleton's staging copy, the first datasets, the last, the metadata
    # HDF5 writes on closing. Each run fails cleanly: no crash, nothing printed, nothing left behind.
    archive, dest, size = hdf5_job
    limits = sorted({0, 1, 512, 2_048, 4_096, 8_192, 16_384, 65_536, 131_072, size // 2, size - 4_096, size - 1})
    for limit in limits:
        if force:
            dest.write_bytes(b"the previous file\n")
        before = folder_state(archive.parent)
        result = decompress_with_size_limit(archive, dest, limit, force)
        assert result == (4, f"{dest}: file too large (the file size limit was reached)", ""), limit
        assert folder_state(archive.parent) == before, limit
    assert decompress_with_size_limit(archive, dest, size, True) == (0, "", "")  # the limit was all that failed
    assert dest.stat().st_size == size


def run_cli(args, preexec=None) -> subprocess.CompletedProcess:
    """``python -m sparsify ARGS`` in a subprocess (``preexec`` runs in the child before it starts)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "sparsify", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=120)


def file_size_limit() -> None:
    """In the child: regular files may not grow past 8 KiB; writes beyond fail with EFBIG."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))


@needs_posix
@pytest.mark.parametrize(
    "command, name, message",
    [
        ("compress", "out.sparsify", "file too large (the file size limit was reached)"),
        ("decompress", "out.safetensors", "file too large (the file size limit was reached)"),
        ("decompress", "out.npz", "file too large (the file size limit was reached)"),
        ("decompress", "out.h5", "file too large (the file size limit was reached)"),
    ],
)
def test_file_size_limit_exits_4(archive, tmp_path, command, name, message):
    source = archive.with_suffix(".safetensors") if command == "compress" else archive
    out = tmp_path / "out"
    out.mkdir()
    formats = {".safetensors": "safetensors", ".npz": "npz", ".h5": "hdf5"}
    fmt = ["--format", formats[Path(name).suffix]] if command == "decompress" else []
    before = folder_state(archive.parent)
    result = run_cli([command, source, "-o", out / name, "-q", *fmt], preexec=file_size_limit)
    assert (result.returncode, result.stderr) == (4, f"sparsify: error: {out / name}: {message}\n")
    assert os.listdir(out) == []
    assert folder_state(archive.parent) == before


@needs_posix
def test_file_size_limit_exits_4_rebuilding_hdf5(tmp_path):
    # The same-format rebuild of an HDF5 file, which starts from the source's skeleton.
    source = tmp_path / "m.h5"
    shutil.copyfile(SAMPLE_H5, source)
    sparsify.compress(source)
    out = tmp_path / "out"
    out.mkdir()
    before = folder_state(tmp_path)
    result = run_cli(["decompress", source.with_suffix(".sparsify"), "-o", out / "m.h5", "-q"], preexec=file_size_limit)
    message = "file too large (the file size limit was reached)"
    assert (result.returncode, result.stderr) == (4, f"sparsify: error: {out / 'm.h5'}: {message}\n")
    assert os.listdir(out) == []
    assert folder_state(tmp_path) == before


# -- a read-only destination -------------------------------------------------------------------


def run_cli_unprivileged(args, stderr: Path) -> tuple[int, str]:
    """``sparsify ARGS`` in a forked child that is not root (nobody, when the tests run as root):
    its exit code and stderr. Forked, not exec'd: nobody may not be able to reach the interpreter."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sys.stderr = open(stderr, "w")  # opened before the privileges go
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            code = cli.run([str(a) for a in args])
            sys.stderr.flush()
        finally:
            os._exit(code)
    return wait(pid), stderr.read_text()


@pytest.fixture
def read_only(model):
    """``(input folder, read-only folder)`` both readable by the unprivileged child."""
    with tempfile.TemporaryDirectory(prefix="sparsify-faults-") as top:
        top = Path(top)
        top.chmod(0o755)
        shutil.copyfile(model, top / "m.safetensors")
        sparsify.compress(top / "m.safetensors")
        for path in top.iterdir():
            path.chmod(0o644)
        locked = top / "locked"
        locked.mkdir()
        (locked / "previous.safetensors").write_bytes(b"the previous file\n")
        locked.chmod(0o755 if os.geteuid() == 0 else 0o555)  # root-owned 0755: not writable by nobody
        try:
            yield top, locked
        finally:
            locked.chmod(0o755)


@needs_fork
@pytest.mark.parametrize(
    "command, source, name",
    [
        ("compress", "m.safetensors", "m.sparsify"),
        ("decompress", "m.sparsify", "m.safetensors"),
        ("decompress", "m.sparsify", "previous.safetensors"),  # with --force over an existing file
    ],
)
def test_read_only_destination_exits_4(read_only, tmp_path, command, source, name):
    top, locked = read_only
    before = folder_state(top), folder_state(locked)
    result = run_cli_unprivileged([command, top / source, "-o", locked / name, "--force", "-q"], tmp_path / "stderr")
    assert result == (4, f"sparsify: error: {locked / name}: permission denied\n")
    assert (folder_state(top), folder_state(locked)) == before


# -- an input failing mid-run ------------------------------------------------------------------


def test_input_read_error_inside_the_output_block_is_an_input_error(model, monkeypatch):
    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(model))

    before = folder_state(model.parent)
    monkeypatch.setattr(sparsify.work, "encode_tensor", unreadable)  # a raw read error of the input, mid-archive
    with pytest.raises(InputError) as caught:
        sparsify.compress(model)
    assert str(caught.value) == f"{model}: cannot read: Permission denied"
    assert folder_state(model.parent) == before
