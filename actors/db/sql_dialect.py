"""Where SQLite's and PostgreSQL's SQL differ: placeholders, column types, schema version, locks.

The store writes its queries and migrations once, in SQLite's spelling (`?` placeholders,
`INTEGER PRIMARY KEY AUTOINCREMENT`, `REAL`); `ON CONFLICT ... DO UPDATE SET x = excluded.x`
and `RETURNING` read the same in both. This module turns that spelling into PostgreSQL's.
"""

from __future__ import annotations

import re

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# Advisory lock keys (PostgreSQL's pg_advisory_xact_lock takes a bigint): one per serialised section.
MIGRATION_LOCK = 0x64636C_0001  # "dcl" + 1: one migrating process at a time
PLACEMENT_LOCK = 0x64636C_0002  # every decide-then-reserve of machines, across processes

# PostgreSQL keeps the schema version in a table; SQLite in PRAGMA user_version.
PG_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
PG_READ_VERSION = "SELECT version FROM schema_version"
PG_INIT_VERSION = "INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
PG_WRITE_VERSION = "UPDATE schema_version SET version = $1"
PG_LOCK = "SELECT pg_advisory_xact_lock($1)"  # held until the transaction ends, however it ends

# SQLite type names → PostgreSQL's. REAL is a 4-byte float in PostgreSQL: epoch seconds need 8.
_PG_TYPES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
]
_QUOTED_OR_MARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


def numbered_placeholders(sql: str) -> str:
    """`?` → `$1`, `$2`, ... in order, leaving quoted literals and identifiers alone."""
    count = 0

    def number(match: re.Match) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)
        count += 1
        return f"${count}"

    return _QUOTED_OR_MARK.sub(number, sql)


def statements(script: str) -> list[str]:
    """A migration script's statements (no `;` inside a statement: none of ours has one)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def postgres_ddl(statement: str) -> str:
    for pattern, replacement in _PG_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def rows_affected(status: str) -> int:
    """asyncpg's command status ("UPDATE 3", "INSERT 0 1") → the row count."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
