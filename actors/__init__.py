"""Control plane: plain classes with the logic, thin detached-actor wrappers, the SQLite store, auth."""
