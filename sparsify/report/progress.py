"""Progress on stderr, and only when stderr is a terminal (never in pipes, files or CI logs)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator:
    """Yield a ``progress(name, index, count)`` callback, or None when there is no terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    console = Console(file=sys.stderr)
    columns = (
        TextColumn(f"{label} [bold]{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(name: str, index: int, count: int) -> None:
            bar.update(task, description=name[-40:], completed=index, total=count)

        yield update
