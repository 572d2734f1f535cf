"""Which SQL statements reached the database driver, seen through SQLAlchemy's public event API: how a test
knows a write is at the database (waiting for another process's lock, say) without a sleep."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import sqlalchemy as sa

from tests.waiting import wait_until


class StatementsSeen:
    """How many times a statement containing `fragment` (and `parameter` among its parameters, if given) was sent
    to the driver; each try counts."""

    def __init__(self, fragment: str, parameter: object = None):
        self.fragment, self.parameter = fragment, parameter
        self._lock = threading.Lock()  # the store's statements run on its own threads
        self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    async def reached(self, times: int = 1, timeout_s: float = 10.0) -> None:
        """Returns once the statement was sent `times` times."""

        async def enough() -> bool:
            return self.count >= times

        await wait_until(enough, timeout_s=timeout_s, interval_s=0.01, what=f"{self.fragment!r} sent {times} times")

    def before_cursor_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        if self.fragment in statement and (self.parameter is None or self.parameter in values):
            with self._lock:
                self._count += 1


@contextlib.contextmanager
def statements_seen(fragment: str, parameter: object = None) -> Iterator[StatementsSeen]:
    """Counts, on every engine while the block runs, the statements that contain fragment (and parameter)."""
    seen = StatementsSeen(fragment, parameter)
    sa.event.listen(sa.Engine, "before_cursor_execute", seen.before_cursor_execute)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", seen.before_cursor_execute)
