"""The column types the schema and its migrations share: one spelling for SQLite and PostgreSQL.

SQLite keeps INTEGER and REAL (an INTEGER primary key is its rowid); PostgreSQL gets BIGINT and DOUBLE
PRECISION (its REAL is a 4-byte float, and epoch seconds need 8). Migrations import these, so never change
what one renders: add a new type instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

BigInt: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds: sa.types.TypeEngine[float] = sa.Double().with_variant(sqlite.REAL(), "sqlite")  # epoch seconds, durations
Real = Seconds  # prices, hours: the same 8-byte float
