"""Progress on stderr, and only when stderr is a terminal (never in pipes, files or CI logs).

One bar per command: the phase or the tensor last finished, tensors done of all, bytes of weights
done of all, throughput (MB/s of weights) and the time left -- while rate control measures as well
as while the archive is written.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sparsify.report.names import elide


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator:
    """Yield a ``progress(name, done, count, done_bytes, total_bytes)`` callback, or None when
    stderr is not a terminal (or ``enabled`` is False)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    console = Console(file=sys.stderr)
    columns = (
        TextColumn(f"{label} [bold]{{task.description}}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[tensors]} tensors"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    # no refresh thread (auto_refresh off; every update redraws): with no other thread running, the
    # worker pool can fork its processes
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as bar:
        task = bar.add_task("", total=None, tensors="0/?")
        phase = [None]

        def update(name: str, done: int, count: int, done_bytes: int = 0, total_bytes: int = 0) -> None:
            if done == 0 and phase[0] != name:  # a new phase (planning, encoding): speed and eta afresh
                phase[0] = name
                bar.reset(task, total=total_bytes or None, tensors=f"0/{count}")
            bar.update(
                task,
                description=elide(name, 32).ljust(32),
                completed=done_bytes,
                total=total_bytes or None,
                tensors=f"{done}/{count}",
                refresh=True,
            )

        yield update
