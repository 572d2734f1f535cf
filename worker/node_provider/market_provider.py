"""MarketNodeProvider: the cluster launcher's nodes are leases on providers' machines, kept by the platform.

Loaded by `provider: {type: external, module: worker.node_provider.market_provider.MarketNodeProvider}` both in the
platform's launcher process and in the sub-cluster head's autoscaler (a provider machine), so it
imports only Ray, httpx (through dcluster), tenacity and dcl_core. Every call goes to the platform's
node routes with the cluster-scoped token of `provider.token`; nothing is kept locally but a short cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

import dcluster
from dcl_core import ids
from worker.node_provider import command_runner, nodes_api

logger = logging.getLogger(__name__)

CACHE_TTL_S = 2.0  # node_tags/is_running/... within this age of the last list are served from memory
MIN_REFRESH_S = 0.25  # an unknown node id triggers a new list at most this often
STATUS_OPEN = "open"
ROLES = (NODE_KIND_HEAD, NODE_KIND_WORKER)
_CLUSTER_ID_RE = re.compile(ids.CLUSTER_ID_PATTERN)
_CACHE_FILE_RE = re.compile(r"ray-config-[0-9a-f]{64}")  # ray.autoscaler._private.commands._bootstrap_config


class MarketNodeProvider(NodeProvider):
    """Nodes of one buyer cluster = leases the platform holds on providers' machines.

    provider_config: `platform_url`, `cluster_id` (c-<12 hex>) and `token` (the cluster-scoped JWT), and for an
    https platform with a certificate authority of its own `platform_ca` (PEM, pinned: the platform's chain must
    end at it), as actors/backends/market/launcher_config.py renders them. Thread-safe: the v2 autoscaler calls it from
    several threads.
    """

    def __init__(
        self,
        provider_config: dict[str, Any],
        cluster_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        super().__init__(provider_config, cluster_name)
        platform_url, cluster_id, token = _settings(provider_config)
        self.cluster_id = cluster_id
        self._token = token
        client = self.make_client(platform_url, dcluster.Trust(ca_pem=provider_config.get("platform_ca") or None))
        client.set_token(token)
        self.api = nodes_api.ClusterNodesApi(client, cluster_id, sleep=sleep)
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held during HTTP
        self._refresh_lock = threading.Lock()  # one list call at a time; waiters reuse its answer
        self._nodes: dict[str, dict] = {}  # id -> node as the API answers it, replaced, never mutated
        self._fetched_at = float("-inf")
        self._generation = 0  # bumped by every local change, so an older list never overwrites it

    @classmethod
    def make_client(cls, platform_url: str, trust: dcluster.Trust) -> dcluster.Client:
        """The HTTP client; tests override this to plug in an httpx.MockTransport."""
        return dcluster.Client(platform_url, timeout_s=nodes_api.REQUEST_TIMEOUT_S, trust=trust)

    def __repr__(self) -> str:
        return f"MarketNodeProvider({self.cluster_id!r}, {self.api.client.base_url!r})"

    # --- reads ----------------------------------------------------------------------------

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        nodes = self._snapshot(CACHE_TTL_S)
        return [
            nid
            for nid, node in nodes.items()
            if node.get("status") == STATUS_OPEN and all(_tags(node).get(k) == v for k, v in tag_filters.items())
        ]

    def is_running(self, node_id: str) -> bool:
        node = self._node(node_id)
        return node is not None and node.get("status") == STATUS_OPEN

    def is_terminated(self, node_id: str) -> bool:
        node = self._node(node_id)
        return node is None or node.get("status") != STATUS_OPEN

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._node(node_id)
        return dict(_tags(node)) if node is not None else {}

    def external_ip(self, node_id: str) -> str | None:
        return self._node_ip(node_id)

    def internal_ip(self, node_id: str) -> str | None:
        return self._node_ip(node_id)

    def get_node_id(self, ip_address: str, use_internal_ip: bool = False) -> str:
        """The open lease with this IP (or this lease id). Leases on one machine share its IP: then
        this fails rather than guess, and names the leases."""
        nodes = {nid: n for nid, n in self._snapshot(MIN_REFRESH_S).items() if n.get("status") == STATUS_OPEN}
        if ip_address in nodes:
            return ip_address
        matches = [nid for nid, n in nodes.items() if n.get("node_ip") == ip_address]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(
                f"ip {ip_address} is shared by leases {matches} of cluster {self.cluster_id} "
                "(several nodes on one machine); name the lease id instead"
            )
        known = sorted({str(n.get("node_ip")) for n in nodes.values() if n.get("node_ip")})
        raise ValueError(f"ip {ip_address} not found. Node IPs of cluster {self.cluster_id}: {known}")

    # --- writes ---------------------------------------------------------------------------

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> None:
        """Ask the platform for `count` leases; they are listed (status open) as soon as this returns."""
        role = (node_config or {}).get("role") or tags.get(TAG_RAY_NODE_KIND)
        if role not in ROLES:
            raise ValueError(
                f"node_config.role must be one of {ROLES} (got {role!r}); "
                "the node type's node_config in the cluster config sets it"
            )
        node_type = str(tags.get(TAG_RAY_USER_NODE_TYPE) or role)
        str_tags = {str(k): str(v) for k, v in tags.items()}
        created: list[dict] = []
        try:
            with self._platform(f"creating {count} {role} node(s)", no_capacity=(role, count)):
                created = self.api.create(role, node_type, str_tags, int(count))
        finally:
            self._changed(created)  # even on failure: the platform may have created some
        logger.info("cluster %s: created %s node(s) %s", self.cluster_id, role, [n["id"] for n in created])
        return None

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> None:
        # Resources and labels reach the node as RAY_OVERRIDE_RESOURCES/LABELS of its start command
        # (the updater sets them); the agent adds each machine's own on top.
        return self.create_node(node_config, tags, count)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        str_tags = {str(k): str(v) for k, v in tags.items()}
        with self._platform(f"tagging node {node_id}"):
            node = self.api.set_tags(node_id, str_tags)
        if node is None:  # an answer without the node: apply the merge ourselves
            old = self._nodes.get(node_id) or {"id": node_id}
            node = {**old, "tags": {**_tags(old), **str_tags}}
        self._changed([node])

    def terminate_node(self, node_id: str) -> None:
        try:
            with self._platform(f"terminating node {node_id}"):
                node = self.api.delete(node_id)
        except nodes_api.PlatformError as exc:
            if exc.status_code != 404:
                raise
            node = None  # never existed or already gone: terminated either way
        old = self._nodes.get(node_id)
        self._changed([node or {**(old or {"id": node_id}), "status": "closed"}])
        return None

    def terminate_nodes(self, node_ids: list[str]) -> None:
        """Terminate each; one failure does not stop the others, and the first is raised at the end."""
        failures = []
        for node_id in node_ids:
            try:
                self.terminate_node(node_id)
            except nodes_api.MarketProviderError as exc:
                logger.warning("cluster %s: terminating %s failed: %s", self.cluster_id, node_id, exc)
                failures.append(exc)
        if failures:
            raise failures[0]
        return None

    # --- launcher hooks -------------------------------------------------------------------

    def get_command_runner(
        self,
        log_prefix: str,
        node_id: str,
        auth_config: dict[str, Any],
        cluster_name: str,
        process_runner: Any,
        use_internal_ip: bool,
        docker_config: dict[str, Any] | None = None,
    ) -> command_runner.AgentCommandRunner:
        if docker_config and docker_config.get("container_name"):
            raise ValueError("docker is not supported on market nodes: remove the `docker` section")
        return command_runner.AgentCommandRunner(
            log_prefix, node_id, self.api, cluster_name=cluster_name, secrets=(self._token,)
        )

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return cluster_config

    def cleanup_cluster_resources(self) -> None:
        """Called at the end of teardown_cluster: remove the launcher's config cache file.

        teardown_cluster caches the resolved config (provider token included) in
        <tmp>/ray-config-<sha256>, world-readable, even when creation used no_config_cache.
        """
        path = str(self.provider_config.get("_config_cache_path") or "")
        if not _CACHE_FILE_RE.fullmatch(os.path.basename(path)):
            return
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("config", {}).get("provider", {}).get("cluster_id") == self.cluster_id:
                os.remove(path)
                logger.debug("removed the launcher's config cache %s", path)
        except (OSError, ValueError, AttributeError) as exc:
            logger.debug("config cache %s not removed: %s", path, exc)

    # --- cache ----------------------------------------------------------------------------

    def _snapshot(self, max_age_s: float) -> dict[str, dict]:
        """Every node of the cluster (open and closed), at most max_age_s old."""
        with self._lock:
            if self._clock() - self._fetched_at <= max_age_s:
                return self._nodes
        with self._refresh_lock:
            for _ in range(3):
                with self._lock:
                    if self._clock() - self._fetched_at <= max_age_s:
                        return self._nodes
                    generation = self._generation
                with self._platform("listing nodes"):
                    listed = {str(n["id"]): n for n in self.api.list()}
                with self._lock:
                    if generation == self._generation:  # nothing changed locally while we listed
                        self._nodes, self._fetched_at = listed, self._clock()
                        return listed
            return listed  # changes keep racing the list: use it, and list again next time

    def _node(self, node_id: str) -> dict | None:
        node = self._snapshot(CACHE_TTL_S).get(node_id)
        if node is None:  # created by another process (the head's autoscaler) since the last list
            node = self._snapshot(MIN_REFRESH_S).get(node_id)
        return node

    def _node_ip(self, node_id: str) -> str | None:
        node = self._node(node_id)
        if node is not None and not node.get("node_ip") and node.get("status") == STATUS_OPEN:
            node = self._snapshot(MIN_REFRESH_S).get(node_id)  # the agent may have reported it since
        return (node or {}).get("node_ip") or None

    def _changed(self, nodes: list[dict]) -> None:
        """Record what a write returned, and make the next read list again."""
        with self._lock:
            self._generation += 1
            self._fetched_at = float("-inf")
            if nodes:
                self._nodes = {**self._nodes, **{str(n["id"]): n for n in nodes}}

    @contextlib.contextmanager
    def _platform(self, action: str, *, no_capacity: tuple[str, int] | None = None) -> Iterator[None]:
        """Turn client errors into picklable MarketProviderErrors whose text says what to do."""
        try:
            yield
        except dcluster.ApiError as exc:
            if exc.status_code == 409 and no_capacity is not None:
                role, count = no_capacity
                raise nodes_api.NoCapacityError(
                    str(exc.detail), cluster_id=self.cluster_id, role=role, count=count
                ) from None
            hint = {
                401: " (the cluster's provider token was rejected: expired, or the cluster is gone)",
                403: " (the provider token is not valid for this cluster)",
                404: " (no such cluster or node)",
            }.get(exc.status_code, "")
            raise nodes_api.PlatformError(
                f"cluster {self.cluster_id}: {action} failed: HTTP {exc.status_code}: {exc.detail}{hint}",
                status_code=exc.status_code,
            ) from None
        except dcluster.PlatformUnreachable as exc:
            raise nodes_api.PlatformError(
                f"cluster {self.cluster_id}: {action} failed: the platform is unreachable "
                f"after {nodes_api.REQUEST_ATTEMPTS} attempts ({exc})"
            ) from None


def _tags(node: dict) -> dict[str, str]:
    tags = node.get("tags")
    return tags if isinstance(tags, dict) else {}


def _settings(provider_config: dict[str, Any]) -> tuple[str, str, str]:
    missing = [k for k in ("platform_url", "cluster_id", "token") if not provider_config.get(k)]
    if missing:
        raise ValueError(
            f"provider config lacks {missing}: render the cluster config with the market backend's render_market_config"
        )
    cluster_id = str(provider_config["cluster_id"])
    if not _CLUSTER_ID_RE.match(cluster_id):
        raise ValueError(f"provider.cluster_id {cluster_id!r} is not a cluster id (c-<12 hex>)")
    return str(provider_config["platform_url"]), cluster_id, str(provider_config["token"])
