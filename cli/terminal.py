"""What a person watches while the CLI waits: a cluster's steps and a live status line (rich, on a terminal).

Off a terminal (a pipe, a log, a test) the steps are plain lines on stderr and nothing is redrawn, so
logs stay readable; stdout is never touched (it carries the command's result, or its JSON).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from cli import output


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def step_line(event: Mapping[str, Any], elapsed_s: float) -> str:
    return f"  +{elapsed_s:6.1f}s  {event.get('kind', ''):<14} {event.get('message', '')}"


def status_line(cluster: Mapping[str, Any], elapsed_s: float) -> str:
    """'c-0123456789ab provisioning · 1/2 workers joined · 12 s'."""
    line = (
        f"{cluster.get('id')} {cluster.get('status')} · {cluster.get('workers_joined', 0)}/"
        f"{cluster.get('num_workers', '?')} workers joined · {elapsed_s:.0f} s"
    )
    if cluster.get("reason"):
        line += f" · {cluster['reason']}"
    return line


class ClusterProgress:
    """Steps as they come, and on a terminal a spinner line with the cluster's current status."""

    def __init__(self, what: str, *, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self._stream = stream or sys.stderr
        self._clock = clock
        self._start = clock()
        self._what = what
        self._live = None
        self._console = None

    def __enter__(self) -> ClusterProgress:
        if _is_terminal(self._stream):
            import rich.console

            self._console = rich.console.Console(file=self._stream, highlight=False)
            self._live = self._console.status(self._what, spinner="dots")
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def event(self, event: Mapping[str, Any]) -> None:
        self.message(step_line(event, self.elapsed()))

    def message(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, markup=False)
        else:
            print(text, file=self._stream, flush=True)

    def cluster(self, cluster: Mapping[str, Any]) -> None:
        if self._live is not None:
            self._live.update(f"{self._what}: {status_line(cluster, self.elapsed())}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, stream: TextIO | None = None) -> None:
    """A rich table on a terminal; elsewhere the plain aligned columns scripts already parse."""
    stream = stream or sys.stdout
    if not _is_terminal(stream):
        print(output.table(headers, rows), file=stream)
        return
    import rich.box
    import rich.console
    import rich.table

    table = rich.table.Table(*headers, box=rich.box.SIMPLE_HEAD, header_style="bold")
    for row in rows:
        table.add_row(*("" if c is None else str(c) for c in row))
    rich.console.Console(file=stream, highlight=False).print(table)
