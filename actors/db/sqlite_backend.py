"""The store's SQLite backend (aiosqlite under SQLAlchemy): a writer and a reader connection to a WAL file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from actors.db import busy, migrate
from dcl_core import secret_files

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


class SqliteBackend:
    """Two connections to the database file (WAL): one writes, one transaction at a time; the other
    reads. aiosqlite runs each connection's statements one by one in a thread of its own, so a write
    waiting for SQLite's lock (another process holds it) would hold up every read queued behind it
    on the same connection; on the reader they go on, since WAL readers never wait for a writer."""

    name = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._engine: AsyncEngine | None = None
        self._writer: AsyncConnection | None = None
        self._reader: AsyncConnection | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection

    def describe(self) -> str:
        return str(self.path)

    def _connections(self) -> tuple[AsyncConnection, AsyncConnection]:
        if self._writer is None or self._reader is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._writer, self._reader

    async def open(self, revision: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The driver's timeout is the busy handler's: migrations wait their turn behind another process's.
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{self.path}", poolclass=NullPool, connect_args={"timeout": WRITE_LOCK_WAIT_S}
        )
        writer = reader = None
        try:
            writer = await engine.connect()
            await writer.exec_driver_sql("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose the last ones.
            await writer.exec_driver_sql("PRAGMA synchronous=NORMAL")
            await writer.exec_driver_sql("PRAGMA foreign_keys=ON")
            await writer.commit()
            await self._migrate(writer, revision)
            await writer.exec_driver_sql(f"PRAGMA busy_timeout = {int(_BUSY_POLL_S * 1000)}")
            await writer.commit()
            reader = await engine.connect()
            await reader.exec_driver_sql("PRAGMA query_only=ON")
        except BaseException:
            for conn in (writer, reader):
                if conn is not None:
                    await conn.close()
            await engine.dispose()  # the next call opens afresh
            raise
        # The WAL and shared-memory files hold the same data as the database: owner-only too.
        for path in (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        ):
            if path.exists():
                secret_files.restrict_to_owner(path)
        self._engine, self._writer, self._reader = engine, writer, reader

    async def _migrate(self, writer: AsyncConnection, revision: str) -> None:
        await writer.exec_driver_sql("BEGIN IMMEDIATE")  # serialises migrations across processes
        try:
            await writer.run_sync(migrate.upgrade, revision)
            await writer.commit()
        except BaseException:
            await writer.rollback()
            raise

    async def revision(self) -> str | None:
        return await self._connections()[1].run_sync(migrate.current_revision)

    async def close(self) -> None:
        if self._engine is not None:
            engine, (writer, reader) = self._engine, self._connections()
            self._engine = self._writer = self._reader = None
            await reader.close()
            await writer.close()
            await engine.dispose()

    async def read(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> list[sa.Row[Any]]:
        """On the reader: every row is fetched and the cursor closed at once, so no read keeps a
        snapshot that would hide what is committed later."""
        return list((await self._connections()[1].execute(statement, params)).all())

    async def atomic(self, statements: Callable[[AsyncConnection], Awaitable[T]], lock_wait_s: float | None) -> T:
        """Shielded: a caller cancelled half-way (an HTTP client that hung up, a cancelled actor call)
        must never leave a transaction open: it would hold SQLite's write lock and stall every other
        writer (heartbeats included) until the next commit on this connection.

        Waits at most lock_wait_s (WRITE_LOCK_WAIT_S by default) in all: for this process's earlier
        writes, then for SQLite's lock; past it, DatabaseBusy and nothing written."""
        writer = self._connections()[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (WRITE_LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)

        async def attempt() -> T:
            try:
                result = await statements(writer)
                await writer.commit()
                return result
            except BaseException:
                await writer.rollback()
                raise

        async def run() -> T:
            started = loop.time()
            if not await _acquire_by(self._write_lock, deadline):
                raise _locked(loop.time() - started, "this process's earlier writes")
            try:
                while True:  # SQLite's busy handler waited _BUSY_POLL_S: again, until the deadline
                    try:
                        return await attempt()
                    except sa.exc.OperationalError as exc:
                        if not busy.is_busy(exc):
                            raise
                        if loop.time() >= deadline:
                            raise _locked(loop.time() - started, "SQLite's write lock") from exc.orig
            finally:
                self._write_lock.release()

        return await asyncio.shield(run())

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Nothing more to take: one process (the ClusterManager actor) places on a SQLite file, and
        Database's in-process lock serialises it. A write transaction held across the section
        would stall every other writer (heartbeats) for its length."""
        yield
