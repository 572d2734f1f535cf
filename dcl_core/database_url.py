"""Which database a location names: a PostgreSQL URL, or else a SQLite file (the default)."""

from __future__ import annotations

POSTGRES_URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_URL_SCHEMES)
