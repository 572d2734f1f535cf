"""Alembic's environment: runs on the connection actors.db.migrate hands it, inside that caller's transaction
(which already holds the migration lock), so a failed step leaves the database at its previous revision."""

from alembic import context

from actors.db import schema

context.configure(connection=context.config.attributes["connection"], target_metadata=schema.metadata)
with context.begin_transaction():  # joins the caller's transaction
    context.run_migrations()
