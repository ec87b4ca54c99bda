"""The one error type for user-facing failures, and the exit codes they map to.

Only the CLI catches these (``sparsify.cli.main``); the library raises them and lets callers decide.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``sparsify`` command (README, ``sparsify --help``)."""

    OK = 0
    GATE_FAILED = 1  # an error bound broken, or verify found a mismatch
    USAGE = 2  # bad options or pipeline (click's own code for usage errors)
    BAD_INPUT = 3  # unreadable, unsupported or corrupt input
    CANNOT_WRITE = 4  # output exists without --force, no space, no permission


class SparsifyError(Exception):
    """Base of every error meant for the user: a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class UsageError(SparsifyError):
    """Bad options, pipeline strings or rules."""

    exit_code = ExitCode.USAGE


class InputError(SparsifyError):
    """An input file that cannot be read, is of an unknown format or holds something unsupported."""

    exit_code = ExitCode.BAD_INPUT


class CorruptArchiveError(InputError):
    """An archive that fails validation: bad header, sizes, checksums or version."""


class OutputError(SparsifyError):
    """The output cannot be written (exists without --force, permissions, disk full)."""

    exit_code = ExitCode.CANNOT_WRITE


class GateFailed(SparsifyError):
    """An error bound was broken or a verification found a mismatch (the work itself was done)."""

    exit_code = ExitCode.GATE_FAILED
