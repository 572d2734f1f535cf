"""One Alembic revision per schema step, numbered 0001, 0002, ...: never edit a released one, add the next."""
