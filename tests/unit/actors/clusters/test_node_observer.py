"""NodeObserver with a fake HTTP client; joins' pure decisions."""

import inspect

import httpx
import pytest

from actors.clusters import joins, node_observer
from dcl_core import protocol
from tests import typed_rows

pytestmark = pytest.mark.anyio


class FakeResponse:
    def __init__(self, status_code: int, body=None):
        self.status_code, self._body = status_code, body

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


class FakeHttp:
    """Answers as Ray 2.60's state API (`GET /api/v0/nodes`) does, or as told."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[str, dict, dict]] = []

    async def get(self, url: str, *, headers: dict, params: dict, timeout: float):
        self.calls.append((url, headers, params))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def state_api(*nodes: dict) -> dict:
    return {
        "result": True,
        "msg": "",
        "data": {
            "result": {
                "total": len(nodes),
                "num_after_truncation": len(nodes),
                "num_filtered": len(nodes),
                "result": list(nodes),
            }
        },
    }


def node(node_id: str, *, head: bool = False, state: str = "ALIVE", lease: str | None = None) -> dict:
    labels = {"ray.io/node-id": node_id, **({protocol.LEASE_LABEL: lease} if lease else {})}
    return {
        "node_id": node_id,
        "node_ip": "10.0.0.1",
        "is_head_node": head,
        "state": state,
        "state_message": None,
        "node_name": "10.0.0.1",
        "resources_total": {},
        "labels": labels,
    }


async def alive(http, token="t" * 64):
    return await node_observer.NodeObserver(http).alive_nodes("10.0.0.1", 8265, token)


def test_fake_http_matches_httpx_for_what_the_observer_uses():
    """The fake implements the same Protocol as httpx.AsyncClient.get, so it cannot drift."""
    proto = inspect.signature(node_observer.HttpClient.get).parameters
    assert list(inspect.signature(FakeHttp.get).parameters) == list(proto)
    real = inspect.signature(httpx.AsyncClient.get).parameters
    assert all(name in real for name in proto if name != "self")


async def test_lists_alive_nodes_with_their_lease_labels_and_sends_the_token():
    http = FakeHttp(
        FakeResponse(
            200,
            state_api(
                node("aa", head=True, lease="l-00000000000a"),
                node("bb", lease="l-00000000000b"),
                node("cc", state="DEAD"),
            ),
        )
    )
    nodes = await alive(http)
    assert [(n.node_id, n.is_head, n.lease_id) for n in nodes] == [
        ("aa", True, "l-00000000000a"),
        ("bb", False, "l-00000000000b"),
    ]
    ((url, headers, params),) = http.calls
    assert url == "http://10.0.0.1:8265/api/v0/nodes"
    assert headers == {"Authorization": "Bearer " + "t" * 64}
    assert params["filter_keys"] == "state" and params["filter_values"] == "ALIVE"


@pytest.mark.parametrize(
    "answer, match",
    [
        (FakeResponse(401, None), "HTTP 401"),
        (FakeResponse(403, None), "HTTP 403"),
        (FakeResponse(200, ValueError("not JSON")), "unexpected answer"),
        (FakeResponse(200, {"data": {}}), "unexpected answer"),
        (httpx.ConnectError("refused"), "ConnectError"),
    ],
)
async def test_an_unreadable_head_is_an_observe_error(answer, match):
    with pytest.raises(node_observer.ObserveError, match=match):
        await alive(FakeHttp(answer))


async def test_the_error_never_shows_the_token():
    with pytest.raises(node_observer.ObserveError) as caught:
        await alive(FakeHttp(FakeResponse(403, None)), token="secret-token-" + "x" * 40)
    assert "secret-token" not in str(caught.value)


def lease(lease_id, role, *, status="open", joined_at=None):
    return typed_rows.lease(
        id=lease_id,
        role=role,
        status=status,
        joined_at=joined_at,
        ports={"dashboard": 1},
        node_ip="10.0.0.1",
        machine_id="m-0",
    )


def test_newly_joined_maps_the_head_by_the_head_node_and_workers_by_their_label():
    nodes = [
        node_observer.ObservedNode("aa", "10.0.0.1", True, {}),
        node_observer.ObservedNode("bb", "10.0.0.2", False, {protocol.LEASE_LABEL: "l-w1"}),
    ]
    leases = [
        lease("l-h", "head"),
        lease("l-w1", "worker"),
        lease("l-w2", "worker"),
        lease("l-w3", "worker", joined_at=5.0),
    ]
    assert [l.id for l in joins.newly_joined(leases, nodes)] == ["l-h", "l-w1"]
    # A closed lease never joins, whatever runs with its label; a worker with no label is nobody's.
    assert joins.newly_joined([lease("l-w1", "worker", status="closed")], nodes) == []
    unlabelled = [node_observer.ObservedNode("cc", "10.0.0.3", False, {})]
    assert joins.newly_joined([lease("l-w2", "worker")], unlabelled) == []
    assert joins.observable_head([lease("l-h", "head", status="lost"), lease("l-w1", "worker")]) is None
