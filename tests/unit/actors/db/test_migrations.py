"""Alembic migrations (actors.db.migrate) on SQLite and a real PostgreSQL: the schema they build is the one the
queries use (actors.db.schema), and the databases the numbered migrations made before are adopted and upgraded
with their data."""

import asyncio

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from actors.db import migrate, schema, store
from dcl_core import database_url, domain
from tests.unit.actors.db import numbered_schema

HEAD = migrate.as_version(migrate.head_revision())


def schema_differences(db_location) -> list:
    """What Alembic's autogenerate would change to make the database match actors.db.schema (nothing, when
    migrations and schema agree: tables, columns, types, nullability, indexes, unique constraints)."""
    if database_url.is_postgres_url(db_location):
        return asyncio.run(_pg_differences(str(db_location)))
    with sa.create_engine(f"sqlite:///{db_location}").connect() as conn:
        return [d for d in compare_metadata(MigrationContext.configure(conn), schema.metadata) if _counts(d)]


async def _pg_differences(url: str) -> list:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://" + url.split("://", 1)[1])
    try:
        async with engine.connect() as conn:
            diffs = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), schema.metadata))
    finally:
        await engine.dispose()
    return [d for d in diffs if _counts(d)]


def _counts(diff) -> bool:
    # Alembic's own version table is not one of ours. SQLite reports a primary key column declared without NOT
    # NULL (the numbered migrations' spelling) as nullable; as a key it holds no NULL either way.
    if "alembic_version" in repr(diff):
        return False
    if isinstance(diff, list) and diff and diff[0][0] == "modify_nullable":
        _, _, table, column, *_ = diff[0]
        return column not in schema.metadata.tables[table].primary_key.columns
    return True


def test_the_migrated_schema_is_the_one_the_queries_use(db_location):
    """Successor of test_ddl_gets_postgres_types: 8-byte integers and floats on PostgreSQL come from the column
    types now, and every column, index and constraint the migrations build matches actors.db.schema."""

    async def open_close():
        s = store.Store(db_location)
        try:
            return await s.schema_version()
        finally:
            await s.close()

    assert asyncio.run(open_close()) == HEAD
    assert schema_differences(db_location) == []


def test_postgres_columns_hold_8_byte_numbers(postgres_server):
    """Epoch seconds and ids need 8 bytes: PostgreSQL's REAL and INTEGER are 4."""
    url = postgres_server.create_database()

    async def go():
        s = store.Store(url)
        await s.open()
        await s.close()
        conn = await asyncpg.connect(url)
        try:
            return {
                (r["column_name"]): r["data_type"]
                for r in await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'accounts'"
                )
            }
        finally:
            await conn.close()

    try:
        types = asyncio.run(go())
    finally:
        postgres_server.drop_database(url)
    assert types["id"] == "bigint" and types["created_at"] == "double precision"


async def _seed_numbered(s: store.Store) -> None:
    await s.create_account("carol", "h", domain.Role.PROVIDER, 1.0)


@pytest.mark.parametrize("version", [numbered_schema.MIGRATIONS.__len__(), 2])
def test_a_database_of_the_numbered_migrations_is_adopted_and_upgraded_with_its_data(db_location, tmp_path, version):
    """A platform's database from before Alembic (SQLite's user_version, PostgreSQL's schema_version table) at
    the last numbered version or an older one: stamped with the revision of the same schema, upgraded to the
    newest, its rows kept, and its schema the same as a fresh database's."""
    postgres = isinstance(db_location, str)

    async def go():
        if postgres:
            await numbered_schema.make_postgres(db_location, version)
            conn = await asyncpg.connect(db_location)
            try:
                await conn.execute(
                    "INSERT INTO accounts (username, password_hash, role, created_at) VALUES ('old', 'h', 'buyer', 1)"
                )
            finally:
                await conn.close()
        else:
            numbered_schema.make_sqlite(db_location, version)
            import sqlite3

            conn = sqlite3.connect(db_location)
            conn.execute(
                "INSERT INTO accounts (username, password_hash, role, created_at) VALUES ('old', 'h', 'buyer', 1)"
            )
            conn.commit()
            conn.close()
        s = store.Store(db_location)
        try:
            at = await s.schema_version()
            old = await s.get_account_by_username("old")
            await _seed_numbered(s)  # and it takes new rows
            return at, old
        finally:
            await s.close()

    at, old = asyncio.run(go())
    assert at == HEAD and old["role"] == "buyer"
    assert schema_differences(db_location) == []


def test_upgrading_fills_what_a_lease_runs_on_the_machines_already_registered(db_location):
    """Revision 0010 adds the Ray and Python minor version a lease runs to every machine, read from the specs
    the agents registered: placement matches them at once, before the agents register again."""
    postgres = isinstance(db_location, str)
    last = len(numbered_schema.MIGRATIONS)
    spec = domain.MachineSpec(hostname="h", cpus=4, memory_mb=1024, ray_version="2.9.3", python_version="3.10.12")
    rows = [("m-000000000001", spec.model_dump_json()), ("m-000000000002", '{"hostname": "old agent"}')]
    insert = (
        "INSERT INTO machines (id, provider_id, machine_key, name, spec, gpus, cpus, memory_mb, price_per_gpu_hour, "
        "price_per_cpu_hour, status, registered_at) VALUES ({}, 1, {}, 'n', {}, 0, 4, 1024, 0, 0.1, 'online', 1)"
    )
    account = "INSERT INTO accounts (username, password_hash, role, created_at) VALUES ('p', 'h', 'provider', 1)"

    async def go():
        if postgres:
            await numbered_schema.make_postgres(db_location, last)
            conn = await asyncpg.connect(db_location)
            try:
                await conn.execute(account)
                for mid, text in rows:
                    await conn.execute(insert.format("$1", "$2", "$3"), mid, mid, text)
            finally:
                await conn.close()
        else:
            import sqlite3

            numbered_schema.make_sqlite(db_location, last)
            conn = sqlite3.connect(db_location)
            conn.execute(account)
            conn.executemany(insert.format("?", "?", "?"), [(mid, mid, text) for mid, text in rows])
            conn.commit()
            conn.close()
        s = store.Store(db_location)
        try:
            return await s.schema_version(), [await s.get_machine(mid) for mid, _ in rows]
        finally:
            await s.close()

    at, (known, unknown) = asyncio.run(go())
    assert at == HEAD
    assert (known["ray_version"], known["python_version"]) == ("2.9.3", "3.10")
    assert (unknown["ray_version"], unknown["python_version"]) == ("", "")  # matched with no cluster until it says


def test_a_database_newer_than_the_numbered_versions_is_refused(tmp_path):
    numbered_schema.make_sqlite(tmp_path / "p.db", 2)
    import sqlite3

    conn = sqlite3.connect(tmp_path / "p.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    async def go():
        s = store.Store(tmp_path / "p.db")
        try:
            await s.open()
        finally:
            await s.close()

    with pytest.raises(RuntimeError, match="schema version 99 is newer"):
        asyncio.run(go())


def test_in_lists_and_rows_changed_on_both_backends(db_location):
    """Successor of test_placeholders_are_numbered_outside_quotes and test_rows_affected_reads_asyncpg_status:
    SQLAlchemy binds the parameters; IN lists of any length expand, quotes in values stay values, and a write
    reports the rows it changed on both drivers."""

    async def go():
        s = store.Store(db_location)
        try:
            names = ["it's", 'say "?"', "?", *(f"user{i}" for i in range(600))]
            for name in names[:3]:
                await s.create_account(name, "h", domain.Role.BUYER, 1.0)
            await s.insert_rows(
                schema.accounts,
                [{"username": n, "password_hash": "h", "role": "buyer", "created_at": 1.0} for n in names[3:]],
            )
            accounts = schema.accounts
            found = await s.fetch_column(sa.select(accounts.c.username).where(accounts.c.username.in_(names)))
            changed = await s.write(
                sa.update(accounts).where(accounts.c.username.in_(names[:3])).values(password_hash="h2")
            )
            none = await s.write(sa.update(accounts).where(accounts.c.username == "nobody").values(password_hash="x"))
            return sorted(found) == sorted(names), changed, none
        finally:
            await s.close()

    assert asyncio.run(go()) == (True, 3, 0)
