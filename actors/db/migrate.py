"""Brings a database to a schema revision with Alembic (actors/db/migrations), from empty or from the numbered
versions databases kept before Alembic (SQLite's PRAGMA user_version, PostgreSQL's schema_version table).

Runs on a synchronous connection (AsyncConnection.run_sync) inside the caller's transaction, which already
holds the migration lock: one migrating process at a time, and a failed step leaves the previous revision.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

logger = logging.getLogger(__name__)

SCRIPTS = Path(__file__).with_name("migrations")
HEAD = "head"
# The last version the numbered migrations reached; revision "0009" is the same schema.
LAST_NUMBERED_VERSION = 9


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {SCRIPTS}")
    return head


def as_version(revision: str | None) -> int:
    """A revision's number ("0009" → 9; None, an empty database → 0): revisions are numbered in order."""
    return int(revision) if revision else 0


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: sa.Connection, target: str = HEAD) -> None:
    """Migrates to target (the newest revision by default)."""
    current = current_revision(connection)
    if current is None:
        current = _adopt_numbered_version(connection)
    wanted = head_revision() if target == HEAD else target
    if current != wanted:
        logger.info("migrating %s from revision %s to %s", connection.engine.url.database, current, wanted)
        command.upgrade(_config(connection), target)


def _adopt_numbered_version(connection: sa.Connection) -> str | None:
    """A database the numbered migrations made is stamped with the revision of the same schema, and its old
    version record cleared (code from before Alembic then fails to open it instead of misreading it)."""
    if connection.dialect.name == "sqlite":
        version = connection.exec_driver_sql("PRAGMA user_version").scalar_one()
        if version:
            connection.exec_driver_sql("PRAGMA user_version = 0")
    else:
        if not sa.inspect(connection).has_table("schema_version"):
            return None
        version = connection.exec_driver_sql("SELECT version FROM schema_version").scalar() or 0
        connection.exec_driver_sql("DROP TABLE schema_version")
    if not version:
        return None
    if version > LAST_NUMBERED_VERSION:
        raise RuntimeError(f"schema version {version} is newer than this platform knows ({LAST_NUMBERED_VERSION})")
    revision = f"{version:04d}"
    logger.info("numbered schema version %d is Alembic revision %s", version, revision)
    command.stamp(_config(connection), revision)
    return revision
