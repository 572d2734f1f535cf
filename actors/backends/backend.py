"""The one interface of a backend (where a buyer cluster's nodes run): Backend, what the ClusterManager asks of
it, and LaunchSteps, what the launcher runs around Ray's SDK. Implementations: market/ and aws/, named only in
catalog.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from actors.db import records
from actors.machines import placement
from dcl_core.cluster_spec import ClusterSpec

Place = Callable[[str, list[placement.NodeRequest]], Awaitable[list[placement.Assignment]]]


class Backend(Protocol):
    # Its ClusterSpec.backend value.
    name: str
    # The reconcile loop watches the cluster's leases (lost machines, joined nodes).
    watches_leases: bool
    # Running as soon as the launcher brought the head up (workers join through the head's autoscaler).
    running_once_head_is_up: bool
    # Its launcher config names the cluster's Ray token file (cluster_files.TOKEN_FILE in the cluster's dir).
    names_token_file: bool

    def check(self, spec: ClusterSpec) -> None:
        """Raises errors.InvalidInput when this platform cannot run spec on this backend."""

    async def reserve(self, cluster_id: str, spec: ClusterSpec, place: Place) -> tuple[list[dict[str, Any]], str]:
        """The lease rows to store with the new cluster, and the event that says what was reserved."""

    def launcher_config(self, cluster: records.Cluster, now: float) -> dict[str, Any]:
        """The cluster-launcher config of the cluster."""

    def needs_launcher_teardown(self, leases: list[records.Lease]) -> bool:
        """Whether the launcher has anything to tear down once the leases are closed."""


class LaunchSteps(Protocol):
    """Run by the launcher in its own process (actors/backends/launcher.py), around Ray's SDK calls."""

    def handles(self, config: dict[str, Any]) -> bool:
        """Whether config is a launcher config of this backend."""

    def warm_up(self) -> None:
        """Imports ahead what a launch will need (in a launcher process started before a cluster asks)."""

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config to give Ray's SDK, once what it needs outside Ray exists; before create and teardown."""

    def release(self, config: dict[str, Any]) -> None:
        """After teardown_cluster: removes what Ray leaves behind."""
