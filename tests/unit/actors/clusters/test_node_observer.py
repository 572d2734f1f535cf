"""NodeObserver against a fake head behind httpx's in-process transport; joins' pure decisions."""

import json

import httpx
import pytest

from actors.clusters import joins, node_observer
from dcl_core import protocol
from tests import typed_rows

pytestmark = pytest.mark.anyio


class FakeHead:
    """A head's dashboard behind httpx's in-process transport: answers as Ray 2.60's state API
    (`GET /api/v0/nodes`) does, or as told (a status, a raw body, headers, or a transport error)."""

    def __init__(self, status: int = 200, body=None, *, raw: bytes | None = None, headers=None, error=None):
        self.status, self.body, self.raw, self.headers, self.error = status, body, raw, headers or {}, error
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        raw = self.raw if self.raw is not None else json.dumps(self.body).encode()
        # A stream, as a socket's answer is: the observer reads it raw, chunk by chunk.
        return httpx.Response(self.status, stream=httpx.ByteStream(raw), headers=self.headers)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


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


async def alive(head: FakeHead, token="t" * 64, *, ip="10.0.0.1", port=8265, **options):
    observer = node_observer.NodeObserver(head.client(), **options)
    try:
        return await observer.alive_nodes(ip, port, token)
    finally:
        await observer.close()


async def test_lists_alive_nodes_with_their_lease_labels_and_sends_the_token():
    head = FakeHead(
        body=state_api(
            node("aa", head=True, lease="l-00000000000a"),
            node("bb", lease="l-00000000000b"),
            node("cc", state="DEAD"),
        )
    )
    nodes = await alive(head)
    assert [(n.node_id, n.is_head, n.lease_id) for n in nodes] == [
        ("aa", True, "l-00000000000a"),
        ("bb", False, "l-00000000000b"),
    ]
    (request,) = head.requests
    assert (request.url.scheme, request.url.host, request.url.port, request.url.path) == (
        "http",
        "10.0.0.1",
        8265,
        "/api/v0/nodes",
    )
    assert request.headers["authorization"] == "Bearer " + "t" * 64
    assert request.headers["accept-encoding"] == "identity"
    params = request.url.params
    assert params["filter_keys"] == "state" and params["filter_values"] == "ALIVE"


@pytest.mark.parametrize(
    "head, match",
    [
        (FakeHead(401), "HTTP 401"),
        (FakeHead(403), "HTTP 403"),
        (FakeHead(raw=b"not JSON"), "unexpected answer"),
        (FakeHead(body={"data": {}}), "unexpected answer"),
        (FakeHead(body=["a list"]), "unexpected answer"),
        (FakeHead(error=httpx.ConnectError("refused")), "did not answer \\(ConnectError\\)"),
        (FakeHead(raw=b"\x1f\x8b", headers={"Content-Encoding": "gzip"}), "Content-Encoding 'gzip'"),
    ],
)
async def test_an_unreadable_head_is_an_observe_error(head, match):
    with pytest.raises(node_observer.ObserveError, match=match):
        await alive(head)


async def test_an_answer_over_the_cap_is_an_observe_error_not_a_parse_of_it():
    head = FakeHead(body=state_api(*(node(f"n{i}") for i in range(100))))
    with pytest.raises(node_observer.ObserveError, match="over the 1000-byte cap"):
        await alive(head, max_bytes=1000)


@pytest.mark.parametrize(
    "ip, port, match",
    [
        ("head.example.com", 8265, "not a literal IP address"),
        ("10.0.0.1/../x", 8265, "not a literal IP address"),
        ("0.0.0.0", 8265, "not a unicast address"),
        ("224.0.0.1", 8265, "not a unicast address"),
        ("255.255.255.255", 8265, "not a unicast address"),
        ("10.0.0.1", 0, "not an integer in 1-65535"),
        ("10.0.0.1", 65536, "not an integer in 1-65535"),
    ],
)
async def test_a_reported_address_that_is_not_a_unicast_ip_and_port_is_never_asked(ip, port, match):
    head = FakeHead(body=state_api())
    with pytest.raises(node_observer.ObserveError, match=match):
        await alive(head, ip=ip, port=port)
    assert head.requests == []


async def test_the_error_never_shows_the_token():
    with pytest.raises(node_observer.ObserveError) as caught:
        await alive(FakeHead(403), token="secret-token-" + "x" * 40)
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
