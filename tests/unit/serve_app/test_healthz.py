"""/healthz: 200 when every control-plane actor has recovered, else 503 naming what is still starting."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from dcl_core import protocol
from serve_app import app as app_mod


class _Method:
    def __init__(self, answer):
        self._answer = answer

    def remote(self, *args, **kwargs):
        async def call():
            if isinstance(self._answer, BaseException):
                raise self._answer
            if self._answer == "hang":
                await asyncio.sleep(3600)
            return self._answer

        return call()


class FakeHandle:
    def __init__(self, start_status):
        self.start_status = _Method(start_status)


def client(registry_status, clusters_status) -> TestClient:
    return TestClient(app_mod.create_app(FakeHandle(registry_status), FakeHandle(clusters_status)))


def test_ready_platform_answers_200():
    r = client({"actor": "ProviderRegistry", "ready": True}, {"actor": "ClusterManager", "ready": True}).get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "protocol": protocol.PROTOCOL_VERSION}


def test_a_starting_actor_gives_503_that_names_it_and_its_last_error():
    r = client(
        {"actor": "ProviderRegistry", "ready": False, "attempts": 3, "last_error": "OperationalError: locked"},
        {"actor": "ClusterManager", "ready": True},
    ).get("/healthz")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "2"
    detail = r.json()["detail"]
    assert "ProviderRegistry (start attempt 3): OperationalError: locked" in detail
    assert "ClusterManager" not in detail


def test_an_unreachable_or_silent_actor_gives_503_never_500(monkeypatch):
    monkeypatch.setattr(app_mod, "HEALTH_PROBE_TIMEOUT_S", 0.1)
    r = client(RuntimeError("actor died"), "hang").get("/healthz")
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert "ProviderRegistry: unavailable (RuntimeError)" in detail
    assert "ClusterManager: no answer within" in detail
