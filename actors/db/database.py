"""The platform's database: SQLite (the default) or PostgreSQL under SQLAlchemy Core, migrated by Alembic on
first use; reads, transactions, and the lock every placement holds across processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from actors.db import busy, migrate
from actors.db import prepared as prepared_mod
from actors.db.postgres_backend import PostgresBackend
from actors.db.sqlite_backend import SqliteBackend
from dcl_core import database_url

T = TypeVar("T")
# A row as the stores hand it on: column name → value.
Row = dict[str, Any]

SQLITE = SqliteBackend.name
POSTGRESQL = PostgresBackend.name
PLACEMENT_LOCK = 0x64636C_0002  # advisory lock key: every decide-then-reserve of machines, across processes

# What the reads and writes below run: a SQLAlchemy statement, or one on the fast path (prepared()).
Statement = sa.Executable | prepared_mod.Prepared
prepared = prepared_mod.prepared

# Raised for a constraint a statement broke (unique, foreign key, check): nothing was written.
IntegrityError = sa.exc.IntegrityError


def written(row: Row | None, what: str) -> Row:
    """A row this process just wrote, read back (its absence is a bug, not an input error)."""
    if row is None:
        raise RuntimeError(f"{what} was written but cannot be read back")
    return row


class Transaction(Protocol):
    """What a multi-statement transaction's statements see: one connection, the same methods on both backends
    (sqlite_backend.SqliteTransaction, postgres_backend.PostgresTransaction)."""

    async def execute(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> int:
        """Runs one statement; the rows it changed."""
        ...

    async def executemany(self, statement: sa.Executable, rows: list[dict[str, Any]]) -> None: ...

    async def fetchone(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> Row | None: ...


class Serial:
    """`async with` it: one holder at a time, in this process and, on PostgreSQL, in every process
    that shares the database. Reusable, not reentrant (like asyncio.Lock)."""

    def __init__(self, exclusive: Callable[[int], contextlib.AbstractAsyncContextManager[None]], key: int):
        self._exclusive, self._key = exclusive, key
        self._local = asyncio.Lock()
        self._held: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            held = self._exclusive(self._key)
            await held.__aenter__()
        except BaseException:
            self._local.release()
            raise
        self._held = held

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        held, self._held = self._held, None
        try:
            return await held.__aexit__(*exc_info) if held is not None else None
        finally:
            self._local.release()


class Database:
    """The platform's database, opened (and migrated) lazily on first use: a SQLite file (the
    default: embedded, nothing to set up) or, given a `postgresql://` URL, a PostgreSQL database
    (a platform on several machines). The same Alembic revisions and transactions on both.

    revision: the schema revision to migrate to (the newest by default; tests ask for older ones)."""

    def __init__(self, location: Path | str, *, revision: str = migrate.HEAD):
        if database_url.is_postgres_url(location):
            self._backend: SqliteBackend | PostgresBackend = PostgresBackend(str(location))
        else:
            self._backend = SqliteBackend(Path(location))
        self._revision = revision
        self._opened = False
        self._lock = asyncio.Lock()
        self._placement: Serial | None = None
        self._forms: prepared_mod.Forms | None = None  # the prepared statements' compiled forms, once open

    @property
    def backend(self) -> str:
        """SQLITE or POSTGRESQL."""
        return self._backend.name

    def describe(self) -> str:
        """Where the database is (a PostgreSQL URL without its password)."""
        return self._backend.describe()

    async def open(self) -> None:
        """Opens and migrates the database unless it is open already (every query does this first)."""
        if not self._opened:
            async with self._lock:
                if not self._opened:
                    await self._backend.open(self._revision)
                    self._forms = prepared_mod.Forms(self._backend.dialect())
                    self._opened = True

    async def schema_version(self) -> int:
        """The schema revision the database is at, as a number (0001 → 1)."""
        await self.open()
        return migrate.as_version(await self._backend.revision())

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._backend.close()

    def placement_lock(self) -> Serial:
        """The lock every decide-then-reserve of machines holds (placement's reads, its checks and the
        reservation's writes), so no machine is leased twice, whatever processes share the database."""
        if self._placement is None:
            self._placement = Serial(self._exclusive, PLACEMENT_LOCK)
        return self._placement

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: int) -> AsyncIterator[None]:
        await self.open()
        async with self._backend.exclusive(key):
            yield

    # --- reads and writes (the stores' queries, and tests and benchmarks that seed or inspect rows) --------

    async def fetch_all(self, statement: Statement, params: dict[str, Any] | None = None) -> list[Row]:
        return await self._read(statement, params, _dicts, _driver_dicts)

    async def fetch_one(self, statement: Statement, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self._read(statement, params, _dicts, _driver_dicts)
        return rows[0] if rows else None

    async def fetch_column(self, statement: Statement, params: dict[str, Any] | None = None) -> list[Any]:
        """The first column of every row (no dict per row: for long lists of ids)."""
        return await self._read(statement, params, _first_column, _driver_first_column)

    async def fetch_each(self, reads: Sequence[tuple[prepared_mod.Prepared, dict[str, Any] | None]]) -> list[list[Row]]:
        """Each prepared statement's rows, read one after the other in one hop (SQLite: one trip to the reader's
        thread; PostgreSQL: one pooled connection): for reads that go together, as a cluster and its leases."""
        return await self._read_prepared(reads, _driver_dicts)

    async def write(
        self, statement: Statement, params: dict[str, Any] | None = None, lock_wait_s: float | None = None
    ) -> int:
        """One statement in a transaction of its own; returns the rows it changed."""
        if isinstance(statement, prepared_mod.Prepared):
            return (await self._write_prepared(statement, [params or {}], lock_wait_s))[0]
        return (await self._write([(statement, params)], lock_wait_s))[0]

    async def write_many(
        self, statement: Statement, rows: Sequence[dict[str, Any]], lock_wait_s: float | None = None
    ) -> None:
        """One statement for each of many rows, in one transaction (executemany)."""
        if not rows:
            return
        if isinstance(statement, prepared_mod.Prepared):
            await self._write_prepared(statement, rows, lock_wait_s)
        else:
            await self._write([(statement, list(rows))], lock_wait_s)

    async def write_all(
        self, steps: Sequence[tuple[sa.Executable, Any]], lock_wait_s: float | None = None
    ) -> list[int]:
        """Statements, each with its parameters (a dict, or a list of them for many rows), in one transaction
        (in one hop on SQLite); the rows each changed. A step with an empty list of rows is left out."""
        kept = [(statement, params) for statement, params in steps if params != []]
        return await self._write(kept, lock_wait_s)

    async def insert_rows(self, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        """Many rows into one table, in one transaction (seeding: benchmarks' fleets, tests' fixtures)."""
        await self.write_many(table.insert(), rows)

    async def atomic(self, statements: Callable[[Transaction], Awaitable[T]], lock_wait_s: float | None = None) -> T:
        """Runs statements(tx) and commits, or rolls back, as one transaction. lock_wait_s bounds how long
        it waits for locks before it fails with busy.DatabaseBusy: None, the backend's default."""
        await self.open()
        with _busy_as_database_busy():
            return await self._backend.atomic(statements, lock_wait_s)

    async def _write(self, steps: list[tuple[sa.Executable, Any]], lock_wait_s: float | None) -> list[int]:
        await self.open()
        with _busy_as_database_busy():
            return await self._backend.write(steps, lock_wait_s)

    async def _write_prepared(
        self, statement: prepared_mod.Prepared, rows: Sequence[dict[str, Any]], lock_wait_s: float | None
    ) -> list[int]:
        """Each row's arguments, rows of one compiled form (the same lengths of lists) run together."""
        forms = await self._opened_forms()
        steps: list[tuple[str, list[tuple[Any, ...]]]] = []
        for row in rows:
            sql, arguments = forms.bind(statement, row)
            if steps and steps[-1][0] == sql:
                steps[-1][1].append(arguments)
            else:
                steps.append((sql, [arguments]))
        with _busy_as_database_busy():
            return await self._backend.write_prepared(steps, lock_wait_s)

    async def _read(
        self,
        statement: Statement,
        params: dict[str, Any] | None,
        shape: Callable[[sa.CursorResult[Any]], T],
        driver_shape: prepared_mod.DriverShape[T],
    ) -> T:
        if isinstance(statement, prepared_mod.Prepared):
            return (await self._read_prepared([(statement, params)], driver_shape))[0]
        await self.open()
        with _busy_as_database_busy():
            return await self._backend.read(statement, params, shape)

    async def _read_prepared(
        self,
        reads: Sequence[tuple[prepared_mod.Prepared, dict[str, Any] | None]],
        shape: prepared_mod.DriverShape[T],
    ) -> list[T]:
        forms = await self._opened_forms()
        bound = [forms.bind(statement, params) for statement, params in reads]
        with _busy_as_database_busy():
            return await self._backend.read_prepared(bound, shape)

    async def _opened_forms(self) -> prepared_mod.Forms:
        await self.open()
        if self._forms is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._forms


@contextlib.contextmanager
def _busy_as_database_busy() -> Iterator[None]:
    """A driver's busy error, however SQLAlchemy wrapped it, leaves the store as the one DatabaseBusy."""
    try:
        yield
    except busy.DatabaseBusy:
        raise
    except Exception as exc:  # SQLAlchemy's DBAPIError, or the driver's own on the fast path (prepared)
        if busy.is_busy(exc):
            raise busy.DatabaseBusy(f"database busy: {getattr(exc, 'orig', None) or exc}") from None
        raise


# Rows are read off the driver's cursor: every column of the schema is a type SQLAlchemy passes through as the
# driver gives it (text, integers, floats: actors.db.column_types), and its per-row Row objects cost more than
# the query on the placement and heartbeat paths (benchmarks: head_limits, scale).


def _raw_rows(result: sa.CursorResult[Any]) -> list[Any]:
    cursor = result.cursor
    try:
        return list(cursor.fetchall()) if cursor is not None else []
    finally:
        result.close()


def _dicts(result: sa.CursorResult[Any]) -> list[Row]:
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in _raw_rows(result)]


def _first_column(result: sa.CursorResult[Any]) -> list[Any]:
    return [row[0] for row in _raw_rows(result)]


def _driver_dicts(keys: list[str], rows: Sequence[Any]) -> list[Row]:
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _driver_first_column(keys: list[str], rows: Sequence[Any]) -> list[Any]:
    return [row[0] for row in rows]
