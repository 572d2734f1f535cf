"""The store's one failure a caller handles: the database refused for now (busy); and how to tell it."""

from __future__ import annotations

import sqlite3

# PostgreSQL's SQLSTATEs for "refused for now": serialization failure, deadlock, lock not available, too many
# connections, the server starting up.
_BUSY_SQLSTATES = frozenset({"40001", "40P01", "55P03", "53300", "57P03"})


class DatabaseBusy(Exception):
    """The database could not take a lock in time, or refused for now: nothing was written, and the same
    request can be retried in a moment (the API answers 503 with Retry-After)."""


def is_busy(exc: BaseException | None) -> bool:
    """DatabaseBusy, or a driver's busy error however it is wrapped (SQLAlchemy's .orig, a raise ... from)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DatabaseBusy):
            return True
        if isinstance(exc, sqlite3.OperationalError):
            return "locked" in str(exc) or "busy" in str(exc)
        if getattr(exc, "sqlstate", None) in _BUSY_SQLSTATES:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False
