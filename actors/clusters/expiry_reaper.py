"""ExpiryReaper: a heap of cluster deadlines; sleeps until the next one and has the cluster torn down."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from actors import metrics as metrics_mod
from actors.db import cluster_store as cstore
from actors.db import records
from dcl_core import domain

logger = logging.getLogger(__name__)

EXPIRE = "expire"
WARN = "warn"


class Clusters(Protocol):
    """What the reaper needs of the ClusterManager."""

    async def expire(self, cluster_id: str, deadline: float) -> bool: ...

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None: ...


def warning_lead_s(duration_s: float) -> float:
    """How long before the deadline the owner is warned: 5 minutes, or a tenth of a short lifetime."""
    return min(300.0, duration_s / 10)


class ExpiryReaper:
    """Plain class with the logic; `actors.actor_classes` turns it into a detached actor.

    The heap may hold stale entries (a cluster extended or deleted since): each entry is checked
    against the database when it comes due, so extend and delete only ever push or do nothing.
    """

    def __init__(
        self,
        store: cstore.ClusterStore,
        *,
        clusters: Clusters,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: metrics_mod.Metrics | None = None,
    ):
        self._store = store
        self._metrics = metrics or metrics_mod.NullMetrics()
        self._clusters = clusters
        self._clock = clock
        self._sleep = sleep  # waits until the next deadline on `clock`'s time (a fake clock's tests: a fake sleep)
        self._heap: list[tuple[float, str, str]] = []
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Recovers every active cluster's deadline; ones that passed while the platform was down fire at once."""
        for cluster in await self._store.clusters_with_status(*domain.ClusterStatus.active()):
            self._push(cluster)
        logger.info("expiry reaper tracks %d deadline(s)", len(self._heap))

    async def schedule(self, cluster_id: str) -> float | None:
        """(Re)reads the cluster's deadline and wakes the loop; called on create and extend."""
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None or not cluster.status.is_active():
            return None
        self._push(cluster)
        self._wake.set()
        return cluster.expires_at

    def _push(self, cluster: records.Cluster) -> None:
        deadline = cluster.expires_at
        heapq.heappush(self._heap, (deadline, EXPIRE, cluster.id))
        lead = warning_lead_s(deadline - cluster.created_at)
        if deadline - lead > self._clock():
            heapq.heappush(self._heap, (deadline - lead, WARN, cluster.id))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    async def fire_due(self) -> list[str]:
        """Acts on every entry that is due; returns the clusters it had torn down."""
        expired = []
        while self._heap and self._heap[0][0] <= self._clock():
            when, kind, cluster_id = heapq.heappop(self._heap)
            try:
                if await self._fire(when, kind, cluster_id):
                    expired.append(cluster_id)
            except Exception:
                logger.exception("expiry of cluster %s failed; retrying in 1 s", cluster_id)
                heapq.heappush(self._heap, (self._clock() + 1.0, kind, cluster_id))
        return expired

    async def _fire(self, when: float, kind: str, cluster_id: str) -> bool:
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None or not cluster.status.is_active():
            return False  # deleted or ended already: a stale entry
        if kind == WARN:
            lead = warning_lead_s(cluster.expires_at - cluster.created_at)
            if abs((cluster.expires_at - lead) - when) < 0.5:  # not for an earlier deadline
                await self._clusters.warn_expiry(cluster_id, cluster.expires_at)
            return False
        if cluster.expires_at > self._clock():
            return False  # extended: its new deadline has its own entry
        lateness = self._clock() - cluster.expires_at
        expired = await self._clusters.expire(cluster_id, cluster.expires_at)
        if expired:
            self._metrics.expiry_lateness(lateness)
        return expired

    async def run_deadline_loop(self) -> None:
        """Sleeps until the next deadline or a wake-up; no fixed polling interval."""
        while True:
            try:
                await self.fire_due()
            except Exception:
                logger.exception("expiry step failed")
            next_at = self.next_deadline()
            self._wake.clear()
            waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
            if next_at is not None:
                waits.add(asyncio.ensure_future(self._sleep(max(0.0, next_at - self._clock()))))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
