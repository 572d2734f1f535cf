"""The store's SQLite backend: a writer and a reader connection to a WAL file, each on a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from actors.db import busy, migrate, prepared
from dcl_core import secret_files

logger = logging.getLogger(__name__)

T = TypeVar("T")
Shape = Callable[[sa.CursorResult[Any]], T]  # what a read makes of its result: dicts, one column, ...

# How long a write may wait, by default, for SQLite's write lock (held by another process, or by this
# process's earlier writes) before it gives up busy (the API's 503 with Retry-After).
WRITE_LOCK_WAIT_S = 30.0
# SQLite's own busy handler waits at most this long per attempt; a write's deadline (not the
# connection's busy timeout) decides when it gives up, so a caller can ask for a shorter wait.
_BUSY_POLL_S = 0.25


async def _acquire_by(lock: asyncio.Lock, deadline: float) -> bool:
    """Takes the lock unless the loop's clock passes deadline first (asyncio.wait_for on
    Lock.acquire can lose a lock granted as the timeout fires, before Python 3.12)."""
    acquire = asyncio.ensure_future(lock.acquire())
    await asyncio.wait({acquire}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    if not acquire.done():
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
    if acquire.cancelled():
        return False
    return acquire.result()


def _locked(waited_s: float, why: str) -> busy.DatabaseBusy:
    return busy.DatabaseBusy(f"database is locked: waited {waited_s:.1f} s for {why}")


class _Thread:
    """One connection's work, one call at a time, on a thread of its own: an operation (a read with its rows,
    one statement of a transaction) costs one hop off the event loop, and SQLAlchemy compiles and builds rows
    there too, not on the loop."""

    def __init__(self, name: str):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _Connection:
    """A SQLAlchemy connection and the thread that alone uses it."""

    def __init__(self, engine: sa.Engine, name: str):
        self.thread = _Thread(name)
        self.conn: sa.Connection | None = None
        self._engine = engine

    async def open(self) -> None:
        self.conn = await self.thread.run(self._engine.connect)

    def connection(self) -> sa.Connection:
        if self.conn is None:
            raise RuntimeError("the database is not open")
        return self.conn

    def driver(self) -> sqlite3.Connection:
        """The sqlite3 connection under the SQLAlchemy one (prepared statements run on it)."""
        driver = self.connection().connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            raise RuntimeError(f"not a sqlite3 connection: {driver!r}")
        return driver

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.thread.run(conn.close)
        self.thread.close()


class SqliteTransaction:
    """What a store's multi-statement transaction sees on SQLite (database.Transaction): each statement a hop
    to the writer's thread."""

    def __init__(self, writer: _Connection):
        self._writer = writer

    async def execute(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> int:
        conn = self._writer.connection()
        return await self._writer.thread.run(lambda: conn.execute(statement, params).rowcount)

    async def executemany(self, statement: sa.Executable, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn = self._writer.connection()
            await self._writer.thread.run(lambda: conn.execute(statement, rows))

    async def fetchone(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        conn = self._writer.connection()

        def first() -> dict[str, Any] | None:
            row = conn.execute(statement, params).first()
            return dict(row._mapping) if row is not None else None

        return await self._writer.thread.run(first)


class SqliteBackend:
    """Two connections to the database file (WAL): one writes, one transaction at a time; the other
    reads, each on its thread. A write waiting for SQLite's lock (another process holds it) would hold
    up every read queued behind it on the same connection; on the reader they go on, since WAL readers
    never wait for a writer."""

    name = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._engine: sa.Engine | None = None
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection

    def describe(self) -> str:
        return str(self.path)

    def dialect(self) -> sa.Dialect:
        if self._engine is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._engine.dialect

    def _connections(self) -> tuple[_Connection, _Connection]:
        if self._writer is None or self._reader is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._writer, self._reader

    async def open(self, revision: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The driver's timeout is the busy handler's: migrations wait their turn behind another process's.
        # Each connection is used by its own thread only, never two at once.
        engine = sa.create_engine(
            f"sqlite:///{self.path}",
            poolclass=NullPool,
            connect_args={"timeout": WRITE_LOCK_WAIT_S, "check_same_thread": False},
        )
        writer, reader = _Connection(engine, "sqlite-writer"), _Connection(engine, "sqlite-reader")
        try:
            await writer.open()
            await writer.thread.run(lambda: self._prepare_writer(writer.connection(), revision))
            await reader.open()
            await reader.thread.run(lambda: reader.connection().exec_driver_sql("PRAGMA query_only=ON"))
        except BaseException:
            await reader.close()
            await writer.close()
            engine.dispose()  # the next call opens afresh
            raise
        # The WAL and shared-memory files hold the same data as the database: owner-only too.
        for path in (self.path, *(self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm"))):
            if path.exists():
                secret_files.restrict_to_owner(path)
        self._engine, self._writer, self._reader = engine, writer, reader

    @staticmethod
    def _prepare_writer(conn: sa.Connection, revision: str) -> None:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose the last ones.
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # serialises migrations across processes
        try:
            migrate.upgrade(conn, revision)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(_BUSY_POLL_S * 1000)}")
        conn.commit()

    async def revision(self) -> str | None:
        reader = self._connections()[1]
        return await reader.thread.run(lambda: migrate.current_revision(reader.connection()))

    async def close(self) -> None:
        if self._engine is not None:
            engine, (writer, reader) = self._engine, self._connections()
            self._engine = self._writer = self._reader = None
            await reader.close()
            await writer.close()
            engine.dispose()

    async def read(self, statement: sa.Executable, params: dict[str, Any] | None, shape: Shape[T]) -> T:
        """shape(result) on the reader's thread (rows become dicts there, not on the event loop): every row
        is fetched and the cursor closed at once, so no read keeps a snapshot that would hide what is
        committed later."""
        reader = self._connections()[1]
        conn = reader.connection()
        return await reader.thread.run(lambda: shape(conn.execute(statement, params)))

    async def read_prepared(
        self, reads: Sequence[tuple[str, tuple[Any, ...]]], shape: prepared.DriverShape[T]
    ) -> list[T]:
        """Prepared statements' rows, one after the other in one hop to the reader's thread, each shaped there
        and its cursor closed at once (as read)."""
        reader = self._connections()[1]
        driver = reader.driver()

        def fetch() -> list[T]:
            shaped = []
            for sql, arguments in reads:
                cursor = driver.execute(sql, arguments)
                try:
                    shaped.append(shape([column[0] for column in cursor.description or ()], cursor.fetchall()))
                finally:
                    cursor.close()
            return shaped

        return await reader.thread.run(fetch)

    async def write_prepared(
        self, steps: Sequence[tuple[str, list[tuple[Any, ...]]]], lock_wait_s: float | None
    ) -> list[int]:
        """Prepared statements, each with its rows' arguments, and their commit, as write: one hop, one
        transaction (the driver's own: the SQLAlchemy connection holds none between transactions)."""
        writer = self._connections()[0]
        driver = writer.driver()

        def execute_and_commit() -> list[int]:
            try:
                changed = []
                for sql, rows in steps:
                    try:
                        cursor = driver.executemany(sql, rows)
                    except sqlite3.IntegrityError as exc:  # as SQLAlchemy raises it (database.IntegrityError)
                        raise sa.exc.IntegrityError(sql, rows, exc) from exc
                    changed.append(cursor.rowcount)
                    cursor.close()
                driver.commit()
                return changed
            except BaseException:
                driver.rollback()
                raise

        return await self._serialised(lambda: writer.thread.run(execute_and_commit), lock_wait_s)

    async def atomic(self, statements: Callable[[SqliteTransaction], Awaitable[T]], lock_wait_s: float | None) -> T:
        """Shielded: a caller cancelled half-way (an HTTP client that hung up, a cancelled actor call)
        must never leave a transaction open: it would hold SQLite's write lock and stall every other
        writer (heartbeats included) until the next commit on this connection.

        Waits at most lock_wait_s (WRITE_LOCK_WAIT_S by default) in all: for this process's earlier
        writes, then for SQLite's lock; past it, DatabaseBusy and nothing written."""
        writer = self._connections()[0]
        conn = writer.connection()

        async def attempt() -> T:
            try:
                result = await statements(SqliteTransaction(writer))
                await writer.thread.run(conn.commit)
                return result
            except BaseException:
                await writer.thread.run(conn.rollback)
                raise

        return await self._serialised(attempt, lock_wait_s)

    async def write(self, steps: list[tuple[sa.Executable, Any]], lock_wait_s: float | None) -> list[int]:
        """Statements (each with a dict of parameters, or a list of them) and their commit in one hop to the
        writer's thread, as one transaction: the heartbeats' and cluster creation's path. The rows each
        changed. The same waits and shield as atomic."""
        writer = self._connections()[0]
        conn = writer.connection()

        def execute_and_commit() -> list[int]:
            try:
                changed = [conn.execute(statement, params).rowcount for statement, params in steps]
                conn.commit()
                return changed
            except BaseException:
                conn.rollback()
                raise

        return await self._serialised(lambda: writer.thread.run(execute_and_commit), lock_wait_s)

    async def _serialised(self, attempt: Callable[[], Awaitable[T]], lock_wait_s: float | None) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (WRITE_LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)

        async def run() -> T:
            started = loop.time()
            if not await _acquire_by(self._write_lock, deadline):
                raise _locked(loop.time() - started, "this process's earlier writes")
            try:
                while True:  # SQLite's busy handler waited _BUSY_POLL_S: again, until the deadline
                    try:
                        return await attempt()
                    except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:
                        if not busy.is_busy(exc):
                            raise
                        if loop.time() >= deadline:
                            raise _locked(loop.time() - started, "SQLite's write lock") from getattr(exc, "orig", exc)
            finally:
                self._write_lock.release()

        return await asyncio.shield(run())

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Nothing more to take: one process (the ClusterManager actor) places on a SQLite file, and
        Database's in-process lock serialises it. A write transaction held across the section
        would stall every other writer (heartbeats) for its length."""
        yield
