"""dcluster.Client against httpx.MockTransport: encoding, error mapping, 401 re-login, unreachable."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

import httpx
import pytest

import dcluster
from dcl_core import api as api_models
from dcl_core import domain

SPEC = domain.MachineSpec(
    hostname="gpu-box", cpus=16, memory_mb=64000, gpus=[domain.GpuInfo(index=0, model="RTX 4090", memory_mb=24564)]
)
PASSWORD = "s3cret-pass"


class FakePlatform:
    """A handler for MockTransport: records requests, answers from a routing table."""

    def __init__(self):
        self.requests: list[httpx.Request] = []
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.routes = {}

    def route(self, method, path, fn):
        self.routes[(method, path)] = fn

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if (request.method, request.url.path) == ("POST", "/v1/token"):
            form = parse_qs(request.content.decode())
            if form != {"username": ["prov1"], "password": [PASSWORD]}:
                return httpx.Response(401, json={"detail": "Incorrect username or password"})
            self.tokens_issued += 1
            token = f"tok-{self.tokens_issued}"
            self.valid_tokens.add(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "bearer", "expires_in": 1800})
        fn = self.routes.get((request.method, request.url.path))
        if fn is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        return fn(request)

    def authed(self, request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.valid_tokens


@pytest.fixture
def platform():
    return FakePlatform()


@pytest.fixture
def client(platform):
    c = dcluster.Client("http://platform.test:8000/", transport=httpx.MockTransport(platform))
    yield c
    c.close()


def _json(request):
    return json.loads(request.content)


def test_healthz(platform, client):
    platform.route("GET", "/healthz", lambda r: httpx.Response(200, json={"status": "ok"}))
    assert client.healthz() is True
    platform.route("GET", "/healthz", lambda r: httpx.Response(503, json={"detail": "starting"}))
    assert client.healthz() is False


def test_login_sends_a_form_and_then_the_bearer_token(platform, client):
    platform.route(
        "GET",
        "/v1/accounts/me",
        lambda r: httpx.Response(200, json={"id": 1, "username": "prov1", "role": "provider", "created_at": 1.0}),
    )
    assert client.login("prov1", PASSWORD) == "tok-1"
    token_req = platform.requests[0]
    assert token_req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in token_req.headers
    assert client.me()["username"] == "prov1"
    assert platform.requests[-1].headers["authorization"] == "Bearer tok-1"


def test_create_account(platform, client):
    def create(r):
        body = _json(r)
        api_models.AccountCreate.model_validate(body)
        return httpx.Response(
            201, json={"id": 7, "username": body["username"], "role": body["role"], "created_at": 1.0}
        )

    platform.route("POST", "/v1/accounts", create)
    assert client.create_account("prov1", PASSWORD, role=domain.Role.PROVIDER)["role"] == "provider"
    assert _json(platform.requests[-1]) == {"username": "prov1", "password": PASSWORD, "role": "provider"}
    client.create_account("buyer1", PASSWORD)
    assert _json(platform.requests[-1])["role"] == "buyer"


def test_register_machine_body_is_a_machine_register(platform, client):
    def register(r):
        assert platform.authed(r)
        body = api_models.MachineRegister.model_validate(_json(r))
        return httpx.Response(201, json={"id": "m-1", "heartbeat_interval_s": 5.0, "name": body.name})

    platform.route("POST", "/v1/machines", register)
    client.login("prov1", PASSWORD)
    answer = client.register_machine("mk-0123456789", "gpu-box", SPEC, price_per_gpu_hour=0.5)
    assert answer["id"] == "m-1" and answer["heartbeat_interval_s"] == 5.0
    body = _json(platform.requests[-1])
    assert body["machine_key"] == "mk-0123456789" and body["price_per_gpu_hour"] == 0.5
    assert body["spec"]["gpus"][0]["model"] == "RTX 4090"


def test_heartbeat(platform, client):
    platform.route(
        "POST",
        "/v1/machines/m-1/heartbeat",
        lambda r: httpx.Response(200, json={"status": "online", "heartbeat_interval_s": 5.0}),
    )
    usage = domain.MachineUsage(cpu_percent=12.5, memory_used_mb=100, gpu_utilization=[50.0], active_leases=1)
    assert client.heartbeat("m-1", usage) == {"status": "online", "heartbeat_interval_s": 5.0}
    assert api_models.Heartbeat.model_validate(_json(platform.requests[-1])).usage == usage


def test_poll_work_long_poll_timeout(platform, client):
    items = [{"id": "w-1", "kind": "start_node", "payload": {}}]
    platform.route("GET", "/v1/machines/m-1/work", lambda r: httpx.Response(200, json={"items": items}))
    assert client.poll_work("m-1", wait_s=25) == items
    req = platform.requests[-1]
    assert req.url.params["wait_s"] == "25"
    assert req.extensions["timeout"]["read"] == 35  # wait_s + 10: the platform holds the call


def test_leave_accepts_an_empty_answer(platform, client):
    platform.route("DELETE", "/v1/machines/m-1", lambda r: httpx.Response(204))
    assert client.leave("m-1", timeout_s=2.0) == {}
    assert platform.requests[-1].extensions["timeout"]["read"] == 2.0
    platform.route("DELETE", "/v1/machines/m-1", lambda r: httpx.Response(200, json={"message": "left"}))
    assert client.leave("m-1") == {"message": "left"}


def test_list_endpoints_accept_list_or_items(platform, client):
    platform.route("GET", "/v1/machines", lambda r: httpx.Response(200, json=[{"id": "m-1"}]))
    platform.route("GET", "/v1/offers", lambda r: httpx.Response(200, json={"items": [{"gpu_model": None}]}))
    platform.route("GET", "/v1/machines/m-1", lambda r: httpx.Response(200, json={"id": "m-1"}))
    assert client.list_machines() == [{"id": "m-1"}]
    assert client.offers() == [{"gpu_model": None}]
    assert client.get_machine("m-1") == {"id": "m-1"}


def test_api_error_detail_str_list_and_text(platform, client):
    platform.route("GET", "/a", lambda r: httpx.Response(404, json={"detail": "no such machine"}))
    platform.route("GET", "/b", lambda r: httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "bad"}]}))
    platform.route("GET", "/c", lambda r: httpx.Response(502, text="Bad Gateway"))
    platform.route(
        "GET", "/d", lambda r: httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "7"})
    )
    with pytest.raises(dcluster.ApiError) as e:
        client.request("GET", "/a")
    assert (e.value.status_code, e.value.detail, e.value.is_transient) == (404, "no such machine", False)
    with pytest.raises(dcluster.ApiError) as e:
        client.request("GET", "/b")
    assert e.value.detail == [{"loc": ["body"], "msg": "bad"}]
    with pytest.raises(dcluster.ApiError) as e:
        client.request("GET", "/c")
    assert (e.value.status_code, e.value.detail, e.value.is_transient) == (502, "Bad Gateway", True)
    with pytest.raises(dcluster.ClientError) as e:
        client.request("GET", "/d")
    assert e.value.retry_after_s == 7.0 and e.value.is_transient


def test_expired_token_triggers_exactly_one_relogin(platform, client):
    platform.route(
        "GET",
        "/v1/accounts/me",
        lambda r: (
            httpx.Response(200, json={"ok": True})
            if platform.authed(r)
            else httpx.Response(401, json={"detail": "token expired"})
        ),
    )
    client.login("prov1", PASSWORD)
    platform.valid_tokens.clear()  # the token expires
    assert client.me() == {"ok": True}
    paths = [r.url.path for r in platform.requests]
    assert paths == ["/v1/token", "/v1/accounts/me", "/v1/token", "/v1/accounts/me"]
    assert platform.requests[-1].headers["authorization"] == "Bearer tok-2"


def test_persistent_401_is_raised_after_one_retry(platform, client):
    platform.route("GET", "/v1/accounts/me", lambda r: httpx.Response(401, json={"detail": "account disabled"}))
    client.login("prov1", PASSWORD)
    with pytest.raises(dcluster.ApiError) as e:
        client.me()
    assert e.value.status_code == 401
    assert [r.url.path for r in platform.requests].count("/v1/token") == 2


def test_401_without_credentials_is_not_retried(platform, client):
    platform.route("GET", "/v1/accounts/me", lambda r: httpx.Response(401, json={"detail": "bad token"}))
    client.set_token("some-token")
    with pytest.raises(dcluster.ApiError):
        client.me()
    assert len(platform.requests) == 1


def test_wrong_password_raises_401(platform, client):
    with pytest.raises(dcluster.ApiError) as e:
        client.login("prov1", "wrong-password")
    assert e.value.status_code == 401
    assert "wrong-password" not in str(e.value)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_transport_errors_map_to_unreachable(exc):
    def handler(request):
        raise exc

    with dcluster.Client("http://platform.test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(dcluster.PlatformUnreachable) as e:
            c.heartbeat("m-1", domain.MachineUsage())
        assert c.healthz() is False
    assert isinstance(e.value, dcluster.ClientError)
    assert "/v1/machines/m-1/heartbeat" in str(e.value)


def test_secrets_never_logged(platform, client, caplog):
    caplog.set_level(logging.DEBUG)
    platform.route("GET", "/v1/accounts/me", lambda r: httpx.Response(401, json={"detail": "expired"}))
    token = client.login("prov1", PASSWORD)
    with pytest.raises(dcluster.ApiError):
        client.me()
    assert PASSWORD not in caplog.text and token not in caplog.text
    assert PASSWORD not in repr(client) and token not in repr(client)


def test_machine_ids_are_quoted_and_extra_headers_kept(platform, client):
    platform.route("GET", "/v1/machines/a/b", lambda r: httpx.Response(200, json={"id": "a/b"}))
    platform.route("GET", "/v1/clusters", lambda r: httpx.Response(200, json=[]))
    client.set_token("tok-x")
    assert client.get_machine("a/b") == {"id": "a/b"}
    assert platform.requests[-1].url.raw_path == b"/v1/machines/a%2Fb"
    assert client.request("GET", "/v1/clusters", headers={"X-Request-Id": "r1"}) == []
    assert platform.requests[-1].headers["x-request-id"] == "r1"
    assert platform.requests[-1].headers["authorization"] == "Bearer tok-x"


def test_base_url_path_prefix_is_kept():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return httpx.Response(200, json={"status": "ok"})

    with dcluster.Client("http://proxy.test/market/", transport=httpx.MockTransport(handler)) as c:
        assert c.healthz()
    assert seen == ["/market/healthz"]


def test_a_token_given_at_construction_is_sent():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"id": 1})

    with dcluster.Client("http://platform.test", token="tok-saved", transport=httpx.MockTransport(handler)) as c:
        assert c.me() == {"id": 1}
    assert seen == ["Bearer tok-saved"]


def test_buyer_cluster_calls(platform, client):
    """Each cluster call of the SDK sends the platform's path and body, ids quoted, lists unwrapped."""
    cluster = {"id": "c-000000000001", "status": "pending"}
    platform.route("POST", "/v1/clusters", lambda r: httpx.Response(201, json={**cluster, "sent": _json(r)}))
    platform.route("GET", "/v1/clusters", lambda r: httpx.Response(200, json={"items": [cluster]}))
    platform.route("GET", "/v1/clusters/c-000000000001", lambda r: httpx.Response(200, json=cluster))
    platform.route(
        "GET",
        "/v1/clusters/c-000000000001/events",
        lambda r: httpx.Response(200, json=[{"id": int(r.url.params["after"]) + 1, "kind": "requested"}]),
    )
    platform.route("GET", "/v1/clusters/c-000000000001/connection", lambda r: httpx.Response(200, json={"env": {}}))
    platform.route(
        "POST", "/v1/clusters/c-000000000001/extend", lambda r: httpx.Response(200, json={**cluster, **_json(r)})
    )
    platform.route("DELETE", "/v1/clusters/c-000000000001", lambda r: httpx.Response(200, json=cluster))
    platform.route("GET", "/v1/clusters/c-000000000001/logs", lambda r: httpx.Response(200, json=[{"name": "a"}]))
    platform.route(
        "GET",
        "/v1/clusters/c-000000000001/logs/jobs/raysubmit_1",
        lambda r: httpx.Response(200, text="job out", headers={"content-type": "text/plain"}),
    )
    platform.route(
        "GET",
        "/v1/clusters/c-000000000001/logs/file",
        lambda r: httpx.Response(200, text=str(dict(r.url.params)), headers={"content-type": "text/plain"}),
    )
    client.set_token("tok-x")
    created = client.create_cluster(2, 3600, gpus_per_worker=1)
    assert created["sent"] == {"num_workers": 2, "duration_s": 3600, "gpus_per_worker": 1}
    assert client.list_clusters() == [cluster]
    assert client.get_cluster("c-000000000001") == cluster
    assert client.cluster_events("c-000000000001", after=7) == [{"id": 8, "kind": "requested"}]
    assert client.cluster_connection("c-000000000001") == {"env": {}}
    assert client.extend_cluster("c-000000000001", 600)["duration_s"] == 600
    assert client.delete_cluster("c-000000000001") == cluster
    assert client.cluster_logs("c-000000000001") == [{"name": "a"}]
    assert client.cluster_job_log("c-000000000001", "raysubmit_1") == "job out"
    assert client.cluster_log_file("c-000000000001", "ray/raylet.out") == "{'name': 'ray/raylet.out'}"
    assert "node" in client.cluster_log_file("c-000000000001", "x", node="l-1")
    with pytest.raises(dcluster.ApiError) as err:
        client.get_cluster("c-1/../x")
    assert err.value.status_code == 404 and platform.requests[-1].url.raw_path == b"/v1/clusters/c-1%2F..%2Fx"
