"""The schema's Alembic migrations (actors.db.migrate runs them; `versions/` holds one file per step)."""
