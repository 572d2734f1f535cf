"""NodeObserver: which nodes a sub-cluster's own GCS sees ALIVE, read from its head's dashboard over HTTP.

Billing counts a lease from the moment its node is seen here, not from a command's exit status.
The platform's processes hold a different Ray token (the platform cluster's) and Ray's token auth
is process-global, so no GCS client is made here: the head's state API is asked over HTTP with the
sub-cluster's token as a bearer token (Ray's dashboard middleware,
ray/_private/authentication/http_token_authentication.py, reads `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Protocol

import httpx

from actors import bounded_http
from actors.db import records
from dcl_core import domain, node_addresses, protocol

logger = logging.getLogger(__name__)

NODES_PATH = "/api/v0/nodes"  # Ray's state API (ray/dashboard/modules/state/state_head.py)
MAX_NODES = 10_000  # RAY_MAX_LIMIT_FROM_API_SERVER: the API's own ceiling
# 10,000 nodes without detail are a few MiB of JSON; the head is a provider's machine, so its answer is capped.
MAX_ANSWER_BYTES = 16 << 20
REQUEST_TIMEOUT_S = 10.0  # the whole exchange, body included


class ObserveError(Exception):
    """The head's dashboard could not be read (not up yet, refused the token, answered nonsense or too much)."""


class Observer(Protocol):
    """What the ClusterManager needs of the NodeObserver (a fake in unit tests)."""

    async def alive_nodes(self, node_ip: str, dashboard_port: int, token: str) -> list[ObservedNode]: ...


@dataclasses.dataclass(frozen=True)
class ObservedNode:
    node_id: str
    node_ip: str
    is_head: bool
    labels: dict[str, str]

    @property
    def lease_id(self) -> str | None:
        return self.labels.get(protocol.LEASE_LABEL)


def lease_alive(nodes: list[ObservedNode], lease: records.Lease) -> bool:
    """Whether the lease's node is among the alive ones: the head lease by the head node, a worker by its label."""
    if lease.role is domain.NodeRole.HEAD:
        return any(n.is_head for n in nodes)
    return any(n.lease_id == lease.id for n in nodes)


class NodeObserver:
    """All HTTP calls to sub-clusters' heads go through here, each a bounded read (actors.bounded_http)."""

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_bytes: int = MAX_ANSWER_BYTES,
    ):
        self._http = http
        self._bounds = bounded_http.Bounds(max_bytes=max_bytes, total_s=timeout_s)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # made on first use: inside the event loop that uses it
            self._http = bounded_http.client()
        return self._http

    async def alive_nodes(self, node_ip: str, dashboard_port: int, token: str) -> list[ObservedNode]:
        """The ALIVE nodes of the cluster whose head dashboard listens at node_ip:dashboard_port."""
        try:
            host, port = node_addresses.unicast_ip(node_ip), node_addresses.port(dashboard_port)
        except ValueError as exc:
            raise ObserveError(f"the head's dashboard cannot be asked: {exc}") from None
        url = httpx.URL(scheme="http", host=host, port=port, path=NODES_PATH).copy_merge_params(
            {
                "limit": str(MAX_NODES),
                "detail": "false",
                "filter_keys": "state",
                "filter_predicates": "=",
                "filter_values": "ALIVE",
            }
        )
        where = bounded_http.where(url)
        try:
            status, body = await bounded_http.get(
                self._client(), url, headers={"Authorization": f"Bearer {token}"}, bounds=self._bounds
            )
        except bounded_http.BoundedReadError as exc:
            raise ObserveError(str(exc)) from None
        if status != 200:
            raise ObserveError(f"{where}: HTTP {status}")
        try:
            rows = json.loads(body)["data"]["result"]["result"]
            return [
                ObservedNode(
                    node_id=r["node_id"],
                    node_ip=r.get("node_ip", ""),
                    is_head=bool(r["is_head_node"]),
                    labels=dict(r.get("labels") or {}),
                )
                for r in rows
                if r.get("state") == "ALIVE"
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ObserveError(f"{where}: unexpected answer ({type(exc).__name__}: {exc})") from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
