"""The platform's database: the store (SQLite or PostgreSQL), its queries, and the sealing of secrets in it."""
