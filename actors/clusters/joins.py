"""Joins: a lease counts (and is billed) from when its node is seen ALIVE in its own cluster's GCS.

A command's exit status proves nothing: a provider can answer ok and run nothing, and a buyer can
start Ray by other means. So the ClusterManager marks a lease joined only when the NodeObserver,
asking the cluster's head, lists the lease's node as ALIVE (the head lease: the head node; a worker
lease: the node labelled with its lease id). A node leaves when its lease's close is confirmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from actors.clusters import node_observer
from actors.db import cluster_store as cstore
from actors.db import records
from dcl_core import domain

logger = logging.getLogger(__name__)

# After `ray start` reports ok, how long its node has to show up ALIVE before the start counts as
# failed. It is added to the exec call the head's autoscaler waits on, whose read timeout leaves 30 s
# past the command's own (worker.node_provider.nodes_api.EXEC_READ_MARGIN_S).
JOIN_WAIT_S = 20.0
FIRST_POLL_S = 0.2
MAX_POLL_S = 1.0


def unjoined(leases: list[records.Lease]) -> list[records.Lease]:
    """Open leases whose node has not been seen yet."""
    return [l for l in leases if l.is_open and not l.joined]


def observable_head(leases: list[records.Lease]) -> records.Lease | None:
    """The open head lease whose dashboard can be asked (it has its ports and address)."""
    return next((l for l in leases if l.role is domain.NodeRole.HEAD and l.is_open and l.ports and l.node_ip), None)


def newly_joined(leases: list[records.Lease], nodes: list[node_observer.ObservedNode]) -> list[records.Lease]:
    """The unjoined open leases whose node is among the ALIVE ones."""
    return [l for l in unjoined(leases) if node_observer.lease_alive(nodes, l)]


class JoinWatcher:
    """Observes clusters and marks their leases joined; never raises for a head that cannot be read."""

    def __init__(
        self,
        store: cstore.ClusterStore,
        cluster_token: Callable[[str], Awaitable[str]],
        observer: node_observer.Observer,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._store = store
        self._cluster_token = cluster_token  # a cluster's Ray auth token, by its id
        self._observer = observer
        self._clock = clock
        self._sleep = sleep

    async def observe(self, cluster_id: str) -> list[records.Lease]:
        """Marks every open lease of the cluster whose node is ALIVE now as joined (at this moment);
        returns those. Asks nothing when every open lease already joined or no head is open."""
        return (await self._observe(cluster_id))[0]

    async def _observe(self, cluster_id: str) -> tuple[list[records.Lease], list[records.Lease] | None]:
        """observe's joined leases, and the cluster's leases as read when there was nothing to ask (None
        when the head was asked: the rows may have moved on while it answered)."""
        leases = await self._store.leases_of(cluster_id)
        head = observable_head(leases)
        if head is None or not head.node_ip or not head.ports or not unjoined(leases):
            return [], leases
        try:
            token = await self._cluster_token(cluster_id)
            nodes = await self._observer.alive_nodes(head.node_ip, head.ports["dashboard"], token)
        except (node_observer.ObserveError, OSError) as exc:
            logger.debug("cluster %s: its head's nodes could not be read: %s", cluster_id, exc)
            return [], None
        now = self._clock()
        joined = []
        for lease in newly_joined(leases, nodes):
            if await self._store.mark_joined(lease.id, now):
                joined.append(lease)
                message = (
                    f"{lease.role.value} node {lease.id} joined: seen ALIVE in the cluster's GCS "
                    f"(machine {lease.machine_id})"
                )
                logger.info("cluster %s: %s", cluster_id, message)
                await self._store.add_event(cluster_id, domain.EventKind.joined(lease.role), message, now)
        return joined, None

    async def observe_all(self, cluster_ids: list[str]) -> dict[str, list[records.Lease]]:
        """One observation of each cluster, all at once: a slow head never delays the others. Returns the
        leases of the clusters that had nothing to ask (every node joined: most running clusters), as
        read, so that the reconcile step that follows need not read them again."""
        results = await asyncio.gather(*(self._observe(cid) for cid in cluster_ids), return_exceptions=True)
        unchanged: dict[str, list[records.Lease]] = {}
        for cid, result in zip(cluster_ids, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("observing cluster %s failed", cid, exc_info=result)
            elif result[1] is not None:
                unchanged[cid] = result[1]
        return unchanged

    async def wait_joined(self, cluster_id: str, lease_id: str, timeout_s: float = JOIN_WAIT_S) -> bool:
        """Polls the cluster until the lease has joined (True), or timeout_s passed or it closed (False)."""
        deadline = self._clock() + timeout_s
        pause = FIRST_POLL_S
        while True:
            await self.observe(cluster_id)
            lease = await self._store.get_lease(lease_id)
            if lease is None or lease.joined:
                return lease is not None
            if not lease.is_open or self._clock() >= deadline:
                return False
            await self._sleep(min(pause, max(0.0, deadline - self._clock())))
            pause = min(MAX_POLL_S, pause * 2)
