"""ClusterNodesApi: one sub-cluster's node routes on the platform (create, list, tag, delete, exec), with the
retries that are safe for each, and the errors the node provider raises for them. Imports only httpx (through
dcluster), tenacity and dcl_core, as the node provider it serves."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import tenacity
from ray.autoscaler.node_launch_exception import NodeLaunchException

import dcluster
from dcl_core import protocol

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
# Creating nodes answers once they are open: the platform tries each node several times before it gives up.
CREATE_READ_TIMEOUT_S = protocol.NODE_OPEN_BUDGET_S + 30.0
EXEC_READ_MARGIN_S = 30.0  # exec blocks until the agent ran the command: read timeout = its timeout + this
REQUEST_ATTEMPTS = 4
# The request never reached the platform: safe to send again even when it is not idempotent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class MarketProviderError(Exception):
    """Root of MarketNodeProvider's errors. Picklable: the launcher runs inside Ray tasks."""


class PlatformError(MarketProviderError):
    """A node route failed: the platform refused (status_code set) or could not be reached (None)."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class NoCapacityError(MarketProviderError, NodeLaunchException):
    """The platform has no machine for the nodes asked for (HTTP 409); the launcher/autoscaler retries."""

    def __init__(self, detail: str, *, cluster_id: str = "", role: str = "", count: int = 0):
        NodeLaunchException.__init__(
            self,
            "NoCapacity",
            f"no capacity for {count} {role} node(s) of cluster {cluster_id}: {detail} "
            "(the launcher or autoscaler asks again later)",
            None,
        )
        self.detail, self.cluster_id, self.role, self.count = detail, cluster_id, role, count

    def __reduce__(self):
        rebuild = functools.partial(type(self), cluster_id=self.cluster_id, role=self.role, count=self.count)
        return rebuild, (self.detail,)


def _node_path(cluster_id: str, node_id: str | None = None) -> str:
    path = f"/v1/clusters/{quote(cluster_id, safe='')}/nodes"
    return path if node_id is None else f"{path}/{quote(str(node_id), safe='')}"


def _retryable(exc: dcluster.ClientError, idempotent: bool) -> bool:
    if isinstance(exc, dcluster.PlatformUnreachable):
        return idempotent or isinstance(exc.__context__, _NOT_SENT)
    if isinstance(exc, dcluster.ApiError):
        return exc.is_transient if idempotent else exc.status_code in (429, 503)
    return False


class ClusterNodesApi:
    """All calls to one cluster's node routes (`/v1/clusters/{cid}/nodes...`) go through here.

    Transient failures are retried with backoff; a request that is not idempotent (create, run) is
    sent again only when it surely never arrived (connection refused) or the platform said 429/503.
    """

    def __init__(
        self,
        client: dcluster.Client,
        cluster_id: str,
        *,
        attempts: int = REQUEST_ATTEMPTS,
        sleep: Callable[[float], Any] = time.sleep,
        rand: Callable[[], float] = random.random,
    ):
        self.client = client
        self.cluster_id = cluster_id
        self._attempts = max(1, attempts)
        self._sleep = sleep
        self._rand = rand

    def list(self) -> list[dict]:
        body = self._call("GET", _node_path(self.cluster_id), idempotent=True)
        items = body.get("items", []) if isinstance(body, dict) else body or []
        return [n for n in items if isinstance(n, dict) and n.get("id")]

    def create(self, role: str, node_type: str, tags: dict[str, str], count: int) -> list[dict]:
        body = {"role": role, "node_type": node_type, "tags": tags, "count": count}
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=CREATE_READ_TIMEOUT_S)
        created = self._call("POST", _node_path(self.cluster_id), idempotent=False, json=body, timeout=timeout)
        return [n for n in created or [] if isinstance(n, dict) and n.get("id")]

    def set_tags(self, node_id: str, tags: dict[str, str]) -> dict | None:
        node = self._call("PATCH", _node_path(self.cluster_id, node_id), idempotent=True, json={"tags": tags})
        return node if isinstance(node, dict) and node.get("id") else None

    def delete(self, node_id: str) -> dict | None:
        node = self._call("DELETE", _node_path(self.cluster_id, node_id), idempotent=True)
        return node if isinstance(node, dict) and node.get("id") else None

    def exec(self, node_id: str, body: dict, *, timeout_s: float, idempotent: bool) -> dict:
        """Run a command or write a file in the lease (command_runner.NodeExecutor); blocks until it ran."""
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=timeout_s + EXEC_READ_MARGIN_S, write=60.0)
        result = self._call(
            "POST", _node_path(self.cluster_id, node_id) + "/exec", idempotent=idempotent, json=body, timeout=timeout
        )
        return result if isinstance(result, dict) else {}

    def _call(self, method: str, path: str, *, idempotent: bool, **kw) -> Any:
        backoff = dcluster.Backoff(base_s=0.5, cap_s=8.0, rand=self._rand)

        def delay(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception()
            seconds = backoff.next()
            if isinstance(exc, dcluster.ApiError) and exc.retry_after_s:
                seconds = max(seconds, min(exc.retry_after_s, 30.0))
            return seconds

        def log_retry(state: tenacity.RetryCallState) -> None:
            logger.warning(
                "%s %s failed (%s); attempt %d of %d in %.1f s",
                method,
                path,
                state.outcome.exception(),
                state.attempt_number + 1,
                self._attempts,
                state.upcoming_sleep,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._attempts),
            retry=tenacity.retry_if_exception(
                lambda exc: (
                    isinstance(exc, (dcluster.PlatformUnreachable, dcluster.ApiError)) and _retryable(exc, idempotent)
                )
            ),
            wait=delay,
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        return retrying(self.client.request, method, path, **kw)
