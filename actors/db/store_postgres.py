"""The store's PostgreSQL backend (asyncpg): a connection pool, the shared migrations, advisory locks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from actors.db import sql_dialect as dialect

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Per actor process: the ClusterManager holds one connection for its placement lock while it
# reads and writes on others. Three actors × this stays far below PostgreSQL's default 100.
POOL_MAX_SIZE = 8

# Raised for a constraint the statement broke (unique, foreign key, check): nothing was written.
INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (asyncpg.exceptions.IntegrityConstraintViolationError,)

_BUSY = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
)


def is_busy(exc: BaseException) -> bool:
    """The server refused for now (a lock, a conflict, too many connections, starting up): retry later."""
    return isinstance(exc, _BUSY)


class _Transaction:
    """What a store's multi-statement transaction sees: SQLite's `?` spelling, run on one connection."""

    def __init__(self, conn: asyncpg.Connection):
        self._conn = conn

    async def execute(self, sql: str, args: Sequence = ()) -> int:
        return dialect.rows_affected(await self._conn.execute(dialect.numbered_placeholders(sql), *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            await self._conn.executemany(dialect.numbered_placeholders(sql), rows)

    async def fetchone(self, sql: str, args: Sequence = ()) -> dict | None:
        row = await self._conn.fetchrow(dialect.numbered_placeholders(sql), *args)
        return dict(row) if row is not None else None


class PostgresBackend:
    """One pool per process; every write a transaction of its own, read committed."""

    name = dialect.POSTGRESQL
    integrity_errors = INTEGRITY_ERRORS

    def __init__(self, url: str, migrations: Sequence[str]):
        self._url = url
        self._migrations = list(migrations)
        self._pool: asyncpg.Pool | None = None

    def describe(self) -> str:
        """Where the database is, without the password."""
        rest = self._url.split("://", 1)[1]
        return "postgresql://" + rest.rsplit("@", 1)[-1].split("?", 1)[0]

    async def open(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self._url, min_size=1, max_size=POOL_MAX_SIZE)
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return pool

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():  # DDL is transactional here: a failed step leaves the old version
            await conn.execute(dialect.PG_LOCK, dialect.MIGRATION_LOCK)  # one migrating process at a time
            await conn.execute(dialect.PG_VERSION_TABLE)
            await conn.execute(dialect.PG_INIT_VERSION)
            version = await conn.fetchval(dialect.PG_READ_VERSION)
            for target, script in enumerate(self._migrations[version:], start=version + 1):
                logger.info("migrating %s to schema version %d", self.describe(), target)
                for statement in dialect.statements(script):
                    await conn.execute(dialect.postgres_ddl(statement))
                await conn.execute(dialect.PG_WRITE_VERSION, target)

    async def schema_version(self) -> int:
        return await self._pool.fetchval(dialect.PG_READ_VERSION)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def fetchone(self, sql: str, args: Sequence = ()) -> dict | None:
        row = await self._pool.fetchrow(dialect.numbered_placeholders(sql), *args)
        return dict(row) if row else None

    async def fetchall(self, sql: str, args: Sequence = ()) -> list[dict]:
        return [dict(r) for r in await self._pool.fetch(dialect.numbered_placeholders(sql), *args)]

    async def fetchcolumn(self, sql: str, args: Sequence = ()) -> list:
        return [r[0] for r in await self._pool.fetch(dialect.numbered_placeholders(sql), *args)]

    async def atomic(self, statements: Callable[[_Transaction], Awaitable[T]], lock_wait_s: float | None = None) -> T:
        """One transaction; shielded like SQLite's, so a cancelled caller never splits it. With
        lock_wait_s, a lock it waits for longer fails it (LockNotAvailableError: busy)."""

        async def run() -> T:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    if lock_wait_s is not None:
                        await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_wait_s * 1000))}")
                    return await statements(_Transaction(conn))

        return await asyncio.shield(run())

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Held by one process at a time across the whole database: a transaction-scoped advisory
        lock on a connection of its own, released when that transaction ends (or its connection
        drops: a crashed holder never wedges the others)."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(dialect.PG_LOCK, key)
                yield
