"""A database locked past SQLite's busy timeout is a 503 to retry, never a 500."""

from __future__ import annotations

import sqlite3

import ray
from fastapi.testclient import TestClient

from actors.db import busy
from serve_app import app as app_mod
from tests.unit.serve_app.test_healthz import FakeHandle, _Method


def test_a_locked_database_is_a_503_with_retry_after():
    registry = FakeHandle({"actor": "ProviderRegistry", "ready": True})
    # What an actor's failed write arrives as: Ray's task error wrapping sqlite3's.
    cause = sqlite3.OperationalError("database is locked")
    registry.get_account = _Method(ray.exceptions.RayTaskError("get_account", "traceback", cause).as_instanceof_cause())
    app = app_mod.create_app(registry, FakeHandle({"actor": "ClusterManager", "ready": True}))

    @app.get("/probe")
    async def probe():
        return await app.state.registry.get_account.remote()

    r = TestClient(app, raise_server_exceptions=False).get("/probe")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2" and "busy" in r.json()["detail"]


def test_other_database_errors_are_not_called_busy():
    assert busy.is_busy(sqlite3.OperationalError("database is locked"))
    assert not busy.is_busy(sqlite3.OperationalError("no such table: accounts"))
    assert not busy.is_busy(ValueError("database is locked"))
