"""NodeObserver: which nodes a sub-cluster's own GCS sees ALIVE, read from its head's dashboard over HTTP.

Billing counts a lease from the moment its node is seen here, not from a command's exit status.
The platform's processes hold a different Ray token (the platform cluster's) and Ray's token auth
is process-global, so no GCS client is made here: the head's state API is asked over HTTP with the
sub-cluster's token as a bearer token (Ray's dashboard middleware,
ray/_private/authentication/http_token_authentication.py, reads `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

import httpx

from actors.db import records
from dcl_core import domain, protocol

logger = logging.getLogger(__name__)

NODES_PATH = "/api/v0/nodes"  # Ray's state API (ray/dashboard/modules/state/state_head.py)
MAX_NODES = 10_000  # RAY_MAX_LIMIT_FROM_API_SERVER: the API's own ceiling
REQUEST_TIMEOUT_S = 5.0


class ObserveError(Exception):
    """The head's dashboard could not be read (not up yet, refused the token, or answered nonsense)."""


class HttpResponse(Protocol):
    status_code: int

    def json(self) -> Any: ...


class HttpClient(Protocol):
    """The part of httpx.AsyncClient the observer uses (a fake in unit tests)."""

    async def get(
        self, url: str, *, headers: dict[str, Any], params: dict[str, Any], timeout: float
    ) -> HttpResponse: ...


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
    """All HTTP calls to sub-clusters' heads go through here."""

    def __init__(self, http: HttpClient | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S):
        self._http = http
        self._timeout_s = timeout_s

    def _client(self) -> HttpClient:
        if self._http is None:  # made on first use: inside the event loop that uses it
            self._http = httpx.AsyncClient()
        return self._http

    async def alive_nodes(self, node_ip: str, dashboard_port: int, token: str) -> list[ObservedNode]:
        """The ALIVE nodes of the cluster whose head dashboard listens at node_ip:dashboard_port."""
        url = f"http://{node_ip}:{dashboard_port}{NODES_PATH}"
        params = {
            "limit": str(MAX_NODES),
            "detail": "false",
            "filter_keys": "state",
            "filter_predicates": "=",
            "filter_values": "ALIVE",
        }
        try:
            resp = await self._client().get(
                url, headers={"Authorization": f"Bearer {token}"}, params=params, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            raise ObserveError(f"{url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise ObserveError(f"{url}: HTTP {resp.status_code}")
        try:
            rows = resp.json()["data"]["result"]["result"]
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
        except (ValueError, KeyError, TypeError) as exc:
            raise ObserveError(f"{url}: unexpected answer ({type(exc).__name__}: {exc})") from None

    async def close(self) -> None:
        if isinstance(self._http, httpx.AsyncClient):
            await self._http.aclose()
