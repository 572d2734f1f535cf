"""The FastAPI app in-process, on the real ProviderRegistry (no Ray): client input never gives a 500,
and sign-in/sign-up limits key on the client address the route sees."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from actors.access import auth
from actors.db import store
from actors.machines import registry
from actors.settings import PlatformSettings
from dcl_core import domain, errors
from serve_app import app as app_mod
from serve_app import errors as api_errors


class LocalHandle:
    """Stands for an actor handle: `handle.method.remote(...)` awaits the plain object's method."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        method = getattr(self._target, name)

        class _Remote:
            @staticmethod
            def remote(*args, **kwargs):
                return method(*args, **kwargs)

        return _Remote


class NoClusters:
    """A ClusterManager that must not be reached: the request is refused before."""

    def __getattr__(self, name):
        raise AssertionError(f"ClusterManager.{name} reached with invalid input")


@contextlib.contextmanager
def serving(tmp_path, *, address=("203.0.113.7", 50000), proxy_hops=0, **limits):
    """A TestClient of the API over a started registry (one event loop for the registry's database); the
    registry's store is closed on that loop at the end, pass or fail."""
    settings = PlatformSettings(state_dir=tmp_path, bcrypt_rounds=4, **limits)
    db = store.Store(settings.db_path)
    reg = registry.ProviderRegistry(db, settings)
    app = app_mod.create_app(LocalHandle(reg), LocalHandle(NoClusters()), trusted_proxy_hops=proxy_hops)
    with TestClient(app, client=address, raise_server_exceptions=False) as client:
        try:
            client.portal.call(reg.start)
            yield client
        finally:
            client.portal.call(db.close)


@pytest.fixture
def api(tmp_path):
    with serving(tmp_path) as client:
        yield client


def sign_up(api, username, password="password123", path="/v1/accounts", **kwargs):
    return api.post(path, json={"username": username, "password": password}, **kwargs)


def token_of(api, username, password="password123", path="/v1/token"):
    r = api.post(path, data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


# --- text no store, hash or answer can take ----------------------------------------------


@pytest.mark.parametrize("path", ["/v1/token", "/token"])
def test_a_nul_byte_in_a_sign_in_password_is_422(api, path):
    assert sign_up(api, "alice").status_code == 201
    r = api.post(path, data={"username": "alice", "password": "pass\x00word123"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "password"]
    assert "NUL" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/v1/accounts", "/register"])
def test_a_nul_byte_in_a_sign_up_password_is_422(api, path):
    r = sign_up(api, "bob", password="pass\x00word123", path=path)
    assert r.status_code == 422, r.text
    assert "NUL" in json.dumps(r.json())


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "\\ud800abc", "password": "password123"}',
        b'{"username": "carol", "password": "\\udfffpassword123"}',
        b'{"username": "carol", "password": "password123", "\\ud800": 1}',
    ],
)
def test_lone_surrogates_in_json_are_422_not_500(api, body):
    r = api.post("/v1/accounts", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "surrogate" in r.text


def test_a_surrogate_pair_is_ordinary_text_and_gets_the_models_own_answer(api):
    r = api.post(
        "/v1/accounts",
        content=b'{"username": "dave", "password": "\\ud83d\\ude00password"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text


def test_nan_and_infinity_in_json_are_422(api):
    headers = {"Authorization": token_of_new(api, "provider")["Authorization"], "Content-Type": "application/json"}
    body = (
        b'{"machine_key": "mk-abcdefgh", "name": "x", "price_per_gpu_hour": NaN, '
        b'"spec": {"hostname": "h", "cpus": 1, "memory_mb": Infinity}}'
    )
    r = api.post("/v1/machines", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert {tuple(p["loc"]) for p in r.json()["detail"]} == {
        ("body", "price_per_gpu_hour"),
        ("body", "spec", "memory_mb"),
    }


def test_nul_in_stored_text_query_and_path_is_422(api):
    headers = token_of_new(api, "provider")
    r = api.post(
        "/v1/machines",
        headers=headers,
        json={"machine_key": "mk-abcdefgh", "name": "x", "spec": {"hostname": "h\x00", "cpus": 1, "memory_mb": 1}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "spec", "hostname"]
    assert api.get("/cluster/c-%00", headers=token_of_new(api, "buyer")).status_code == 422
    assert api.get("/v1/offers?x=%00", headers=headers).status_code == 422
    assert api.get("/v1/machines", headers=headers).json() == []


def test_event_ids_and_times_past_what_sqlite_or_a_date_holds_are_422(api):
    headers = token_of_new(api, "buyer")
    r = api.get(f"/v1/clusters/c-0123456789ab/events?after={2**64}", headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "after"]
    for query in ("start=inf", "end=1e400", "start=nan", "end=1e300"):
        assert api.get(f"/v1/usage?{query}", headers=headers).status_code == 422, query


_names = itertools.count()


def token_of_new(api, role):
    name = f"{role}{next(_names)}"
    assert api.post("/v1/accounts", json={"username": name, "password": "password123", "role": role}).status_code == 201
    return token_of(api, name)


def test_the_hasher_refuses_nul_with_a_domain_error():
    hasher = auth.PasswordHasher(rounds=4)
    for call in (
        lambda: hasher.hash("a\x00b"),
        lambda: hasher.verify("a\x00b", None),
        lambda: hasher.verify("\ud800", hasher.hash("password123")),
    ):
        with pytest.raises(errors.InvalidInput):
            call()


@pytest.mark.anyio
async def test_concurrent_sign_ups_of_one_username_give_one_account_and_409s(tmp_path, closing):
    db = store.Store(tmp_path / "platform.db")
    closing.push_async_callback(db.close)
    # All at once on one connection: the losers' rollbacks must undo neither the winner's
    # insert nor the bystanders' (before, the winner could answer 500 with its row gone).
    calls = [db.create_account("racer", f"hash{i}", domain.Role.BUYER, 1.0) for i in range(20)]
    calls += [db.create_account(f"bystander{i}", "hash", domain.Role.BUYER, 1.0) for i in range(5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    stored = [a["username"] for a in await db.list_accounts()]
    racers, bystanders = results[:20], results[20:]
    assert [r["username"] for r in racers if isinstance(r, dict)] == ["racer"], racers
    assert all(isinstance(r, errors.Conflict) for r in racers if not isinstance(r, dict)), racers
    assert [r["username"] for r in bystanders] == [f"bystander{i}" for i in range(5)], bystanders
    assert sorted(stored) == sorted(["racer"] + [f"bystander{i}" for i in range(5)])


# --- limits per client address and overall ------------------------------------------------


def test_a_username_spray_from_one_address_gets_429_and_another_address_still_signs_in(tmp_path):
    limits = {"login_failures_per_address_per_minute": 5, "password_hashes_per_minute": 600}
    with serving(tmp_path, **limits) as attacker:
        assert sign_up(attacker, "victim").status_code == 201
        codes = [
            attacker.post("/v1/token", data={"username": f"guess{i}", "password": "password123"}).status_code
            for i in range(7)
        ]
        assert codes == [401] * 5 + [429] * 2
        r = attacker.post("/token", data={"username": "victim", "password": "password123"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "failed sign-ins from 203.0.113.7" in r.json()["detail"]
        # The same app and registry, called from another address: its limit is its own.
        r = attacker.portal.call(
            _post_from,
            attacker.app,
            ("198.51.100.9", 40000),
            "/v1/token",
            {"username": "victim", "password": "password123"},
        )
        assert r.status_code == 200, r.text


async def _post_from(app, address, path, data):
    transport = httpx.ASGITransport(app=app, client=address)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post(path, data=data)


def test_sign_ups_from_one_address_are_throttled(tmp_path):
    with serving(tmp_path, signups_per_address_per_minute=3) as api:
        codes = [sign_up(api, f"user{i}", path="/register" if i % 2 else "/v1/accounts").status_code for i in range(5)]
        assert codes == [201] * 3 + [429] * 2
        r = sign_up(api, "user9")
        assert "sign-ups from 203.0.113.7" in r.json()["detail"] and 15 <= int(r.headers["Retry-After"]) <= 20


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(tmp_path):
    spoofed = {"X-Forwarded-For": "192.0.2.1"}
    with serving(tmp_path / "direct", signups_per_address_per_minute=1) as api:
        assert sign_up(api, "first", headers=spoofed).status_code == 201
        r = sign_up(api, "second", headers={"X-Forwarded-For": "192.0.2.2"})
        assert r.status_code == 429 and "203.0.113.7" in r.json()["detail"]  # the header changed nothing
    with serving(tmp_path / "proxied", proxy_hops=1, signups_per_address_per_minute=1) as api:
        assert sign_up(api, "first", headers={"X-Forwarded-For": "6.6.6.6, 192.0.2.1"}).status_code == 201
        assert sign_up(api, "second", headers={"X-Forwarded-For": "192.0.2.2"}).status_code == 201
        r = sign_up(api, "third", headers={"X-Forwarded-For": "7.7.7.7, 192.0.2.2"})
        assert r.status_code == 429 and "192.0.2.2" in r.json()["detail"]


# --- the schema documents the answers ----------------------------------------------------


def test_every_route_documents_the_errors_any_route_can_give(tmp_path):
    spec = app_mod.create_app(None, None).openapi()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            documented = set(operation["responses"])
            assert {str(c) for c in api_errors.COMMON_ERRORS} <= documented, (method, path, documented)
            if operation.get("security") or path.startswith(("/v1/clusters", "/v1/machines", "/cluster")):
                assert {"401", "403"} <= documented, (method, path)
    assert {"409", "429"} <= set(spec["paths"]["/v1/accounts"]["post"]["responses"])
    assert "429" in spec["paths"]["/v1/token"]["post"]["responses"]
