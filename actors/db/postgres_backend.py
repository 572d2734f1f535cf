"""The store's PostgreSQL backend (asyncpg under SQLAlchemy): a connection pool, advisory locks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from actors.db import migrate, prepared

T = TypeVar("T")

# Per actor process: the ClusterManager holds one connection for its placement lock while it
# reads and writes on others. Three actors × this stays far below PostgreSQL's default 100.
POOL_MAX_SIZE = 8
MIGRATION_LOCK = 0x64636C_0001  # advisory lock key, "dcl" + 1: one migrating process at a time
_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")  # held until the transaction ends, however it ends


class PostgresTransaction:
    """What a store's multi-statement transaction sees on PostgreSQL (database.Transaction): one connection."""

    def __init__(self, conn: AsyncConnection):
        self._conn = conn

    async def execute(self, statement: sa.Executable, params: Any = None) -> int:
        """Runs one statement (params: a dict, or a list of them); the rows it changed."""
        return (await self._conn.execute(statement, params)).rowcount

    async def executemany(self, statement: sa.Executable, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self._conn.execute(statement, rows)

    async def fetchone(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        row = (await self._conn.execute(statement, params)).first()
        return dict(row._mapping) if row is not None else None


class PostgresBackend:
    """One pool per process; every write a transaction of its own, read committed; reads in autocommit (one
    round trip each, no BEGIN/ROLLBACK around them)."""

    name = "postgresql"

    def __init__(self, url: str):
        self._url = url
        self._engine: AsyncEngine | None = None
        self._reads: AsyncEngine | None = None

    def describe(self) -> str:
        """Where the database is, without the password."""
        rest = self._url.split("://", 1)[1]
        return "postgresql://" + rest.rsplit("@", 1)[-1].split("?", 1)[0]

    async def open(self, revision: str) -> None:
        # asyncpg parses the operator's URL itself, as psql would (sslmode, ~/.pgpass, several hosts).
        engine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=lambda: asyncpg.connect(self._url),
            pool_size=POOL_MAX_SIZE,
            max_overflow=0,
        )
        try:
            async with engine.begin() as conn:  # DDL is transactional here: a failed step leaves the old revision
                await conn.execute(_LOCK, {"key": MIGRATION_LOCK})
                await conn.run_sync(migrate.upgrade, revision)
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._reads = engine, engine.execution_options(isolation_level="AUTOCOMMIT")

    def _engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        if self._engine is None or self._reads is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._engine, self._reads

    def dialect(self) -> sa.Dialect:
        return self._engines()[0].dialect

    async def revision(self) -> str | None:
        async with self._engines()[1].connect() as conn:
            return await conn.run_sync(migrate.current_revision)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine, self._reads = self._engine, None, None
            await engine.dispose()

    async def read(
        self, statement: sa.Executable, params: dict[str, Any] | None, shape: Callable[[sa.CursorResult[Any]], T]
    ) -> T:
        async with self._engines()[1].connect() as conn:
            return shape(await conn.execute(statement, params))

    async def read_prepared(
        self, reads: Sequence[tuple[str, tuple[Any, ...]]], shape: prepared.DriverShape[T]
    ) -> list[T]:
        """Prepared statements' rows, one after the other on one asyncpg connection itself (autocommit, as
        read)."""
        shaped = []
        async with self._engines()[1].connect() as conn:
            driver = await _driver(conn)
            for sql, arguments in reads:
                records = await driver.fetch(sql, *arguments)
                shaped.append(shape(list(records[0].keys()) if records else [], records))
        return shaped

    async def write_prepared(
        self, steps: Sequence[tuple[str, list[tuple[Any, ...]]]], lock_wait_s: float | None
    ) -> list[int]:
        """Prepared statements, each with its rows' arguments, in one transaction on the asyncpg connection
        itself; shielded and bounded by lock_wait_s as atomic. The rows each changed."""

        async def run() -> list[int]:
            async with self._engines()[0].connect() as conn:
                driver = await _driver(conn)
                async with driver.transaction():
                    if lock_wait_s is not None:
                        await driver.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_wait_s * 1000))}")
                    return [await _execute(driver, sql, rows) for sql, rows in steps]

        return await asyncio.shield(run())

    async def atomic(self, statements: Callable[[PostgresTransaction], Awaitable[T]], lock_wait_s: float | None) -> T:
        """One transaction; shielded like SQLite's, so a cancelled caller never splits it. With
        lock_wait_s, a lock it waits for longer fails it (lock_not_available: busy)."""

        async def run() -> T:
            async with self._engines()[0].begin() as conn:
                if lock_wait_s is not None:
                    await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_wait_s * 1000))}")
                return await statements(PostgresTransaction(conn))

        return await asyncio.shield(run())

    async def write(self, steps: list[tuple[sa.Executable, Any]], lock_wait_s: float | None) -> list[int]:
        """Statements (each with a dict of parameters, or a list of them) in one transaction; the rows each
        changed."""

        async def run(tx: PostgresTransaction) -> list[int]:
            return [await tx.execute(statement, params) for statement, params in steps]

        return await self.atomic(run, lock_wait_s)

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Held by one process at a time across the whole database: a transaction-scoped advisory
        lock on a connection of its own, released when that transaction ends (or its connection
        drops: a crashed holder never wedges the others)."""
        async with self._engines()[0].begin() as conn:
            await conn.execute(_LOCK, {"key": key})
            yield


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a pooled SQLAlchemy one (prepared statements run on it)."""
    driver = (await conn.get_raw_connection()).driver_connection
    if not isinstance(driver, asyncpg.Connection):
        raise RuntimeError(f"not an asyncpg connection: {driver!r}")
    return driver


async def _execute(driver: asyncpg.Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """One statement for each of rows; the rows it changed (-1 for many: executemany does not say)."""
    try:
        if len(rows) == 1:
            return _rows_changed(await driver.execute(sql, *rows[0]))
        await driver.executemany(sql, rows)
        return -1
    except asyncpg.IntegrityConstraintViolationError as exc:  # as SQLAlchemy raises it (database.IntegrityError)
        raise sa.exc.IntegrityError(sql, rows, exc) from exc


def _rows_changed(status: str) -> int:
    """The row count in a command status ("UPDATE 3", "INSERT 0 1"); -1 where it has none."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1
