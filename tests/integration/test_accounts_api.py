"""Accounts, sign-in, roles and input validation against the real Serve app."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from tests.integration.helpers import Api, unique

pytestmark = pytest.mark.slow


def test_v1_register_login_me(platform):
    api = Api(platform.url)
    name = unique("buyer")
    r = api.post("/v1/accounts", json={"username": name, "password": "password123", "role": "buyer"})
    assert r.status_code == 201, r.text
    assert r.json()["username"] == name and r.json()["role"] == "buyer"
    r = api.post("/v1/token", data={"username": name, "password": "password123"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 1800
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"sub", "role", "exp", "iat", "jti"} <= set(claims) and claims["exp"] - claims["iat"] == 1800
    me = Api(platform.url, body["access_token"]).get("/v1/accounts/me")
    assert me.status_code == 200 and me.json()["username"] == name


def test_seed_paths_work_as_the_seed_documents(platform):
    api = Api(platform.url)
    name = unique("gpu_provider")
    r = api.post("/register", json={"username": name, "password": "securepassword"})
    assert r.status_code == 201 and r.json()["role"] == "provider"
    r = api.post(
        "/token",
        data={"username": name, "password": "securepassword"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    me = Api(platform.url, r.json()["access_token"]).get("/providers/me")
    assert me.status_code == 200 and me.json()["username"] == name
    assert api.get("/providers/me").status_code == 401


def test_duplicate_username_is_409_and_keeps_the_first_password(platform):
    first = Api.sign_up(platform.url, "buyer")
    r = Api(platform.url).post(
        "/v1/accounts", json={"username": first.username, "password": "different-pw", "role": "provider"}
    )
    assert r.status_code == 409 and first.username in r.json()["detail"]
    assert (
        Api(platform.url).post("/v1/token", data={"username": first.username, "password": "password123"}).status_code
        == 200
    )
    assert first.get("/v1/accounts/me").json()["role"] == "buyer"


def test_admin_role_cannot_be_self_assigned(platform):
    r = Api(platform.url).post(
        "/v1/accounts", json={"username": unique("boss"), "password": "password123", "role": "admin"}
    )
    assert r.status_code == 403
    r = platform.admin().post(
        "/v1/accounts", json={"username": unique("ops"), "password": "password123", "role": "admin"}
    )
    assert r.status_code == 201


def test_tokens_missing_forged_expired_are_401(platform):
    buyer = Api.sign_up(platform.url, "buyer")
    token = buyer.http.headers["Authorization"].split()[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims, "role": "admin"}, "not-the-secret-but-long-enough-for-hs256-use", algorithm="HS256")
    expired_claims = {**claims, "exp": int(time.time()) - 5}
    expired = jwt.encode(expired_claims, "not-the-secret-but-long-enough-for-hs256-use", algorithm="HS256")
    unsigned = jwt.encode({**claims, "role": "admin"}, key=None, algorithm="none")
    for bad in (None, "garbage", forged, expired, unsigned, token[:-4] + "AAAA"):
        api = Api(platform.url, bad) if bad else Api(platform.url)
        for path in ("/v1/accounts/me", "/v1/offers", "/v1/machines"):
            r = api.get(path)
            assert r.status_code == 401, (path, bad, r.text)
            assert r.json()["detail"]


def test_roles_are_enforced_with_403(platform):
    buyer = Api.sign_up(platform.url, "buyer")
    assert buyer.get("/v1/machines").status_code == 403
    r = buyer.post(
        "/v1/machines",
        json={"machine_key": "mk-abcdefgh", "name": "x", "spec": {"hostname": "h", "cpus": 1, "memory_mb": 1}},
    )
    assert r.status_code == 403 and "provider" in r.json()["detail"]
    assert buyer.get("/v1/offers").status_code == 200


def test_failed_logins_are_rate_limited(platform):
    user = Api.sign_up(platform.url, "buyer")
    anon = Api(platform.url)
    codes = [
        anon.post("/v1/token", data={"username": user.username, "password": "wrong-password"}).status_code
        for _ in range(11)
    ]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    r = anon.post("/v1/token", data={"username": user.username, "password": "password123"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Other accounts are unaffected, and so is the limited account's existing session.
    assert user.get("/v1/accounts/me").status_code == 200


def test_openapi_and_docs(platform):
    api = Api(platform.url)
    spec = api.get("/openapi.json").json()
    for path in ("/v1/accounts", "/v1/token", "/v1/machines", "/v1/offers", "/register", "/token", "/providers/me"):
        assert path in spec["paths"]
    assert api.get("/docs").status_code == 200


BAD_ACCOUNT_BODIES = [
    ("malformed json", b'{"username": "abc", ', 422),
    ("not an object", b"[1, 2, 3]", 422),
    ("wrong type", b'{"username": 123, "password": "password123"}', 422),
    ("short username", b'{"username": "ab", "password": "password123"}', 422),
    ("long username", b'{"username": "' + b"a" * 65 + b'", "password": "password123"}', 422),
    ("odd characters", b'{"username": "Robert\'); DROP TABLE accounts;--", "password": "password123"}', 422),
    ("unicode username", '{"username": "\u00e9l\u00e8ve", "password": "password123"}'.encode(), 422),
    ("null byte", b'{"username": "abc\\u0000def", "password": "password123"}', 422),
    ("short password", b'{"username": "okname", "password": "short"}', 422),
    ("password over 72 bytes", b'{"username": "okname", "password": "' + b"p" * 73 + b'"}', 422),
    ("unknown field", b'{"username": "okname", "password": "password123", "is_admin": true}', 422),
    ("unknown role", b'{"username": "okname", "password": "password123", "role": "root"}', 422),
    ("huge body", b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'"}', 413),
]


@pytest.mark.parametrize("label,body,status", BAD_ACCOUNT_BODIES, ids=[b[0] for b in BAD_ACCOUNT_BODIES])
def test_bad_account_input_is_4xx_and_changes_nothing(platform, label, body, status):
    witness = Api.sign_up(platform.url, "buyer")
    name = unique("ok")  # a fresh name per case: the check below must not trip the login limiter
    body = body.replace(b"okname", name.encode())
    r = httpx.post(
        platform.url + "/v1/accounts", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert witness.get("/v1/accounts/me").json()["username"] == witness.username
    assert Api(platform.url).post("/v1/token", data={"username": name, "password": "password123"}).status_code == 401


def test_bad_machine_input_is_4xx(platform):
    provider = Api.sign_up(platform.url, "provider")
    good = {"machine_key": "mk-" + "a" * 12, "name": "box", "spec": {"hostname": "h", "cpus": 4, "memory_mb": 1024}}
    cases = [
        ({**good, "spec": {**good["spec"], "cpus": 0}}, 422),
        ({**good, "spec": {**good["spec"], "cpus": "many"}}, 422),
        ({**good, "spec": {**good["spec"], "gpus": [{"index": 0, "model": "x" * 200, "memory_mb": 1}]}}, 422),
        ({**good, "price_per_gpu_hour": -1}, 422),
        ({**good, "price_per_gpu_hour": 1e12}, 422),
        ({**good, "machine_key": "short"}, 422),
        ({**good, "name": "has space"}, 422),
        ({**good, "extra": 1}, 422),
    ]
    for body, status in cases:
        r = provider.post("/v1/machines", json=body)
        assert r.status_code == status, (body, r.text)
    assert provider.get("/v1/machines").json() == []
    r = provider.post("/v1/machines", json=good)
    assert r.status_code == 201
    machine_id = r.json()["id"]
    assert provider.get("/v1/machines/not-an-id").status_code == 422
    assert provider.get("/v1/machines/m-000000000000").status_code == 404
    r = provider.post(f"/v1/machines/{machine_id}/heartbeat", json={"usage": {"cpu_percent": 250}})
    assert r.status_code == 422
    r = provider.get(f"/v1/machines/{machine_id}/work", params={"wait_s": 999})
    assert r.status_code == 422
    assert provider.get(f"/v1/machines/{machine_id}").json()["spec"]["cpus"] == 4
