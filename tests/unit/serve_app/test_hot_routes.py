"""serve_app.hot_routes: the heartbeat and the cluster read answered past FastAPI's routing give, for
every request, exactly FastAPI's answer (status, headers, body), on the real ProviderRegistry.

Each request is sent as is and again with an unknown query parameter, which the hot lane never
takes and the routes ignore: the second answer is FastAPI's own."""

from __future__ import annotations

import json

import httpx
import pytest
import ray
from fastapi.testclient import TestClient

import dcluster
from actors.access import auth
from actors.db import store
from actors.machines import registry
from actors.settings import PlatformSettings
from dcl_core import domain, errors, protocol
from serve_app import api_metrics, hot_routes
from serve_app import app as app_mod
from tests.unit.serve_app.test_api_inputs import LocalHandle, token_of, token_of_new
from worker.agent import agent as agent_mod

CLUSTER = {
    "id": "c-0123456789ab",
    "name": "x",
    "status": "running",
    "reason": None,
    "num_workers": 0,
    "gpus_per_worker": 0,
    "gpu_model": None,
    "cpus_per_worker": 1,
    "duration_s": 600,
    "backend": "ray",
    "created_at": 1.0,
    "expires_at": 2e9,
    "running_at": 1.5,
    "ended_at": None,
    "workers_joined": 0,
    "head_node_ip": "10.0.0.1",
    "nodes": [],
}
DOWN = "c-00000000dead"  # the read of this cluster finds the ClusterManager restarting
BROKEN = "c-00000000beef"  # this cluster's answer does not fit the response model


class Clusters:
    """The ClusterManager's batched read: the buyer's one cluster; another's is a 404."""

    def __init__(self):
        self.owner: int | None = None

    async def get_clusters(self, reads):
        if any(cid == DOWN for _, cid in reads):
            raise ray.exceptions.ActorUnavailableError("restarting", None)
        return [
            {**CLUSTER, "id": cid, "status": 7}
            if cid == BROKEN
            else {**CLUSTER, "id": cid}
            if p.account_id == self.owner or p.role is domain.Role.ADMIN
            else errors.NotFound(f"no cluster {cid}")
            for p, cid in reads
        ]


class Counting:
    """Counts the requests the hot lane passes on to FastAPI."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def api(tmp_path, monkeypatch):
    settings = PlatformSettings(state_dir=tmp_path, bcrypt_rounds=4)
    db = store.Store(settings.db_path)
    reg = registry.ProviderRegistry(db, settings)
    clusters = Clusters()
    latency: list[tuple] = []  # what the API's latency middleware records, in place of Ray's histogram
    monkeypatch.setattr(api_metrics, "ray_recorder", lambda: lambda *labels: latency.append(labels[:3]))
    app = app_mod.create_app(LocalHandle(reg), LocalHandle(clusters))
    with TestClient(app, raise_server_exceptions=False) as client:
        try:
            client.portal.call(reg.start)
            client.latency = latency
            layer = app.middleware_stack
            while not isinstance(layer, hot_routes.HotRoutes):
                layer = layer.app
            client.passed_on = layer.app = Counting(layer.app)
            client.clusters, client.registry = clusters, reg
            yield client
        finally:
            client.portal.call(db.close)  # on the client's loop, pass or fail


def both_ways(api, method, path, *, expect_hot: bool, **kwargs):
    """The answer through the hot lane and FastAPI's own; they must be the same."""
    before = api.passed_on.calls
    hot = api.request(method, path, **kwargs)
    assert (api.passed_on.calls == before) is expect_hot, (method, path, hot.status_code, hot.text)
    plain = api.request(method, path + "?via=fastapi", **kwargs)
    assert api.passed_on.calls > before
    assert (hot.status_code, hot.headers.items(), hot.content) == (
        plain.status_code,
        plain.headers.items(),
        plain.content,
    )
    return hot


def enroll(api, provider) -> tuple[str, str]:
    spec = {"hostname": "h", "os": "Linux", "arch": "x86_64", "cpus": 4, "memory_mb": 8000, "gpus": []}
    r = api.post(
        "/v1/machines",
        headers=provider,
        json={
            "machine_key": "mk-hot-routes",
            "name": "hot",
            "spec": spec,
            "price_per_gpu_hour": 1.0,
            "price_per_cpu_hour": 0.05,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["agent_key"]


BEAT = {
    "usage": {"cpu_percent": 12.5, "memory_used_mb": 2048, "gpu_utilization": [], "active_leases": 0},
    "leases": ["l-0123456789ab"],
}


def test_heartbeats_answer_as_fastapi_does_and_only_the_ordinary_one_skips_it(api):
    provider = token_of_new(api, "provider")
    machine_id, key = enroll(api, provider)
    agent = {"Authorization": f"Bearer {key}"}
    path = f"/v1/machines/{machine_id}/heartbeat"
    ack = both_ways(api, "POST", path, expect_hot=True, headers=agent, json=BEAT)
    assert ack.status_code == 200 and ack.json()["stale_leases"] == ["l-0123456789ab"]
    assert both_ways(api, "POST", path, expect_hot=True, headers=agent, json={}).status_code == 200
    # The latency metric names the route's template, whichever way the request went.
    assert api.latency[-4:] == [("/v1/machines/{machine_id}/heartbeat", "POST", 200)] * 4
    raw = {**agent, "Content-Type": "application/json"}
    refused = {  # each is FastAPI's to answer, with the problem named
        "bad lease id": dict(headers=agent, json={**BEAT, "leases": ["nope"]}),
        "NaN": dict(headers=raw, content=b'{"usage": {"cpu_percent": NaN}}'),
        "NUL": dict(headers=agent, json={"leases": ["l-0123456789ab\x00"]}),
        "not JSON": dict(headers=raw, content=b"{"),
        "a list": dict(headers=agent, json=[]),
        "an unknown field": dict(headers=agent, json={**BEAT, "extra": 1}),
        "form body": dict(headers=agent, data={"usage": "x"}),
        "no credential": dict(json=BEAT),
        "malformed key": dict(headers={"Authorization": "Bearer dcm.nope"}, json=BEAT),
        "basic auth": dict(headers={"Authorization": "Basic dXNlcjpwYXNz"}, json=BEAT),
    }
    for why, kwargs in refused.items():
        r = both_ways(api, "POST", path, expect_hot=False, **kwargs)
        assert 400 <= r.status_code < 500, (why, r.status_code, r.text)
    # The provider's own sign-in may heartbeat too (FastAPI's path), and the caller must own the machine.
    assert both_ways(api, "POST", path, expect_hot=False, headers=provider, json=BEAT).status_code == 200
    other = f"/v1/machines/m-{'0' * 12}/heartbeat"
    assert both_ways(api, "POST", other, expect_hot=True, headers=agent, json=BEAT).status_code in (401, 403, 404)
    # A wrong secret for the machine, checked by the registry on every beat.
    wrong = {"Authorization": "Bearer " + key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")}
    assert both_ways(api, "POST", path, expect_hot=True, headers=wrong, json=BEAT).status_code == 401


def test_a_revoked_agent_key_is_refused_on_its_next_heartbeat(api):
    provider = token_of_new(api, "provider")
    machine_id, key = enroll(api, provider)
    agent = {"Authorization": f"Bearer {key}"}
    path = f"/v1/machines/{machine_id}/heartbeat"
    assert api.post(path, headers=agent, json=BEAT).status_code == 200
    (key_row,) = api.get("/v1/machine-keys", headers=provider).json()
    assert api.delete(f"/v1/machine-keys/{key_row['id']}", headers=provider).status_code == 200
    r = both_ways(api, "POST", path, expect_hot=True, headers=agent, json=BEAT)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_cluster_reads_answer_as_fastapi_does_and_only_the_ordinary_one_skips_it(api):
    buyer_name = "hotbuyer"
    assert (
        api.post("/v1/accounts", json={"username": buyer_name, "password": "password123", "role": "buyer"}).status_code
        == 201
    )
    buyer = token_of(api, buyer_name)
    api.clusters.owner = api.get("/v1/accounts/me", headers=buyer).json()["id"]
    path = f"/v1/clusters/{CLUSTER['id']}"
    assert api.get(path, headers=buyer).status_code == 200  # the replica fetched the signing secret
    r = both_ways(api, "GET", path, expect_hot=True, headers=buyer)
    assert r.status_code == 200 and r.json() == {
        **CLUSTER,
        "max_price_per_gpu_hour": None,
        "max_price_per_cpu_hour": None,
        "ray_version": None,
        "python_version": None,
    }
    admin = {"Authorization": "Bearer " + api.app.state.tokens.issue(auth.Principal(1, "root", domain.Role.ADMIN))}
    assert both_ways(api, "GET", path, expect_hot=True, headers=admin).status_code == 200
    assert both_ways(api, "GET", path, expect_hot=True, headers=token_of_new(api, "buyer")).status_code == 404
    assert both_ways(api, "GET", f"/v1/clusters/{DOWN}", expect_hot=True, headers=buyer).status_code == 503
    assert both_ways(api, "GET", f"/v1/clusters/{BROKEN}", expect_hot=True, headers=buyer).status_code == 500
    issuer = auth.TokenIssuer(api.portal.call(api.registry.signing_secret), ttl_s=60, clock=lambda: 1000.0)
    expired = issuer.issue(auth.Principal(api.clusters.owner, buyer_name, domain.Role.BUYER))
    scoped = api.app.state.tokens.issue(
        auth.Principal(api.clusters.owner, buyer_name, domain.Role.BUYER, cluster_id=CLUSTER["id"])
    )
    refused = {
        "a provider": token_of_new(api, "provider"),
        "no credential": {},
        "expired": {"Authorization": f"Bearer {expired}"},
        "forged": {
            "Authorization": "Bearer "
            + auth.TokenIssuer("x" * 48).issue(auth.Principal(api.clusters.owner, buyer_name, domain.Role.ADMIN))
        },
        "cluster-scoped": {"Authorization": f"Bearer {scoped}"},
        "an agent key": {"Authorization": "Bearer dcm.m-0123456789ab." + "A" * 43},
    }
    for why, headers in refused.items():
        r = both_ways(api, "GET", path, expect_hot=False, headers=headers)
        assert r.status_code in (401, 403), (why, r.status_code, r.text)
    assert both_ways(api, "GET", "/v1/clusters/c-nope", expect_hot=False, headers=buyer).status_code == 422


def test_the_body_cap_still_holds_before_the_hot_lane(api):
    provider = token_of_new(api, "provider")
    machine_id, key = enroll(api, provider)
    body = json.dumps({**BEAT, "leases": ["l-0123456789ab"] * 70_000}).encode()
    r = api.post(
        f"/v1/machines/{machine_id}/heartbeat",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413


def test_an_answer_shared_by_coalesced_reads_is_serialized_once():
    made = []
    last = hot_routes.LastSerialized(
        size=2, serialize=lambda route, answer: made.append(answer) or json.dumps(answer).encode()
    )
    route = hot_routes.GET_CLUSTER
    shared, other = dict(CLUSTER), dict(CLUSTER)
    assert last(route, shared) == last(route, shared) == json.dumps(CLUSTER).encode()
    assert len(made) == 1
    last(route, other)  # equal but another object (another batch's answer): serialized anew
    last(route, {"id": "x"})  # pushes the oldest out
    last(route, shared)
    assert len(made) == 4


def test_an_agent_of_another_protocol_version_is_refused_with_426_naming_both(api, tmp_path, monkeypatch):
    """Every route an agent calls refuses another protocol version, heartbeats included (past the hot lane);
    the same agent announcing the platform's version, or nothing (agents made before the header), is served."""
    provider = token_of_new(api, "provider")
    machine_id, key = enroll(api, provider)
    agent = {"Authorization": f"Bearer {key}"}
    newer = {**agent, protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION + 1)}
    path = f"/v1/machines/{machine_id}/heartbeat"
    r = both_ways(api, "POST", path, expect_hot=False, headers=newer, json=BEAT)
    assert r.status_code == 426
    assert (
        f"protocol {protocol.PROTOCOL_VERSION + 1}" in r.json()["detail"]
        and f"platform protocol {protocol.PROTOCOL_VERSION}" in r.json()["detail"]
    )
    same = {**agent, protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION)}
    assert both_ways(api, "POST", path, expect_hot=True, headers=same, json=BEAT).status_code == 200
    for method, route, kwargs in (
        ("GET", f"/v1/machines/{machine_id}/work?wait_s=0", {}),
        ("POST", f"/v1/machines/{machine_id}/results/w-0123456789ab", {"json": {"ok": True}}),
        ("DELETE", f"/v1/machines/{machine_id}", {}),
        ("POST", "/v1/machines", {"json": {}}),
    ):
        for garbled in ("2", "", "one", "1.0"):
            answer = api.request(method, route, headers={**agent, protocol.PROTOCOL_HEADER: garbled}, **kwargs)
            assert answer.status_code == 426, (route, garbled, answer.text)
    # The schema says so, on exactly the agent's routes.
    schema = api.get("/openapi.json").json()["paths"]
    assert "426" in schema["/v1/machines/{machine_id}/heartbeat"]["post"]["responses"]
    assert "426" not in schema["/v1/offers"]["get"]["responses"]


class AnnouncingAnother(httpx.BaseTransport):
    """The wire of an agent release with the next protocol version: its calls announce that version."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert request.headers[protocol.PROTOCOL_HEADER] == str(protocol.PROTOCOL_VERSION)  # dcluster.Client's
        request.headers[protocol.PROTOCOL_HEADER] = str(protocol.PROTOCOL_VERSION + 1)
        return self.inner.handle_request(request)


def test_the_real_agent_stops_with_the_platforms_426(api, tmp_path):
    """An agent of another version learns it from its first call (a heartbeat, or a registration) and stops."""
    provider = token_of_new(api, "provider")
    machine_id, key = enroll(api, provider)
    settings = agent_mod.AgentSettings(
        platform_url="http://testserver", username="prov", state_dir=tmp_path / "agent", runtime="none"
    )
    state = agent_mod.MachineState(settings.state_dir)
    state.agent_key = key
    state.save()
    spec = domain.MachineSpec(hostname="h", cpus=1, memory_mb=1000, gpus=[])
    for registered in (True, False):
        client = dcluster.Client("http://testserver", transport=AnnouncingAnother(api._transport))
        machine = agent_mod.Agent(client, settings, detect_fn=lambda: spec, sleep=lambda s: None)
        if registered:
            machine.machine_id = machine_id
        machine.heartbeat_step()
        assert machine.stopping.is_set() and machine.protocol_refused is not None
        assert (
            f"this agent speaks protocol {protocol.PROTOCOL_VERSION + 1} and the platform protocol "
            f"{protocol.PROTOCOL_VERSION}" in machine.protocol_refused
        )
