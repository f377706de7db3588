"""Progress bars for the terminal: the CLI's drawing of the progress that library code reports
through callbacks (an index update's ``on_progress``), so the library writes nothing to a
terminal of its own and a caller embedding slmflow chooses how to show it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from slmflow.tools.rag.index import IndexProgress, OnIndexProgress


@contextmanager
def index_progress_bar(shown: bool = True) -> Iterator[OnIndexProgress | None]:
    """An ``on_progress`` callback that draws an index update as a bar on stderr (files done of
    changed files, and the rates); None when not ``shown`` (JSON output, say)."""
    if not shown:
        yield None
        return
    columns = (TextColumn("indexing {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        tasks: dict[str, int] = {}

        def draw(tick: IndexProgress) -> None:
            if tick.folder not in tasks:
                tasks[tick.folder] = bar.add_task(tick.folder, total=tick.total, rate="")
            bar.update(tasks[tick.folder], completed=tick.done, rate=_rate(tick))

        yield draw


def _rate(tick: IndexProgress) -> str:
    """The file being read and how far into it (pages of a PDF, chunks of a big file) while one
    is; the rates between files. A rate of 0 files/s a minute into a 300-page PDF says nothing."""
    from rich.markup import escape

    if tick.file and tick.part_total:
        return escape(f"{tick.file}: {tick.part_unit} {tick.part_done}/{tick.part_total}")
    if tick.done == 0:
        return "reading the first file"
    return f"{tick.files_per_s:.1f} files/s {tick.chunks_per_s:.0f} chunks/s"
