"""Launches: a cluster's head started with the launcher, and its teardown, as that cluster's background task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from actors import metrics as metrics_mod
from actors.access import platform_secrets
from actors.backends import backend
from actors.clusters import cluster_views as views
from actors.clusters import events as events_mod
from actors.clusters import lease_opener
from actors.db import cluster_store as cstore
from actors.db import records
from actors.settings import PlatformSettings
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
TEARDOWN_TIMEOUT_S = 120.0


class Launcher(Protocol):
    """Ray's cluster launcher (actors.backends.launcher.RayClusterLauncher, or a fake in tests)."""

    async def create(self, config: dict[str, Any]) -> None: ...

    async def teardown(self, config: dict[str, Any]) -> None: ...


class Launches:
    """Provisions, fails and tears down clusters; one background task per cluster id at a time."""

    def __init__(
        self,
        store: cstore.ClusterStore,
        settings: PlatformSettings,
        *,
        launcher: Launcher,
        opener: lease_opener.LeaseOpener,
        events: events_mod.ClusterEvents,
        secrets: platform_secrets.Secrets,
        metrics: metrics_mod.Metrics,
        backend_of: Callable[[ClusterSpec], backend.Backend],
        tasks: dict[str, asyncio.Task[None]],
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._settings = settings
        self._launcher = launcher
        self._opener = opener
        self._events = events
        self._secrets = secrets
        self._metrics = metrics
        self._backend_of = backend_of
        self._tasks = tasks  # the manager's: cluster id → its provisioning or teardown
        self._clock = clock

    async def provision(self, cluster_id: str) -> None:
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None or not await self._store.set_cluster_status(
            cluster_id, S.PROVISIONING, self._clock(), only_from=(S.PENDING,)
        ):
            return
        await self._events.record(
            cluster_id, domain.EventKind.PROVISIONING, "starting the head node with the Ray cluster launcher"
        )
        try:
            await asyncio.wait_for(
                self._launcher.create(await self._launcher_config(cluster)), timeout=self._settings.provision_timeout_s
            )
        except Exception as exc:
            await self.fail(cluster_id, f"the cluster launcher failed: {views.describe(exc)}")
            return
        spec = cluster.spec
        await self._events.record(
            cluster_id,
            domain.EventKind.HEAD_READY,
            f"head node up; its autoscaler is starting {spec.num_workers} worker(s)",
        )
        if self._backend_of(spec).running_once_head_is_up and await self._store.set_cluster_status(
            cluster_id, S.RUNNING, self._clock(), only_from=(S.PROVISIONING,)
        ):
            await self._events.record(
                cluster_id,
                domain.EventKind.RUNNING,
                "running: the EC2 head is up; workers join through the sub-cluster's own autoscaler",
            )

    async def begin_teardown(self, cluster_id: str, final: S, reason: str) -> bool:
        if await self._store.set_cluster_status(
            cluster_id, S.TERMINATING, self._clock(), ending_as=final, only_from=S.active()
        ):
            await self._events.record(cluster_id, domain.EventKind.TERMINATING, f"tearing down: {reason}")
            provisioning = self._tasks.pop(cluster_id, None)
            if provisioning is not None:
                provisioning.cancel()
            self.spawn(cluster_id, self.teardown(cluster_id, final, reason))
            return True
        return False

    async def fail(self, cluster_id: str, reason: str) -> None:
        logger.warning("cluster %s failed: %s", cluster_id, reason)
        await self._events.record(cluster_id, domain.EventKind.FAILED, reason)
        if await self._store.set_cluster_status(
            cluster_id, S.TERMINATING, self._clock(), reason=reason, ending_as=S.FAILED, only_from=S.active()
        ):
            provisioning = self._tasks.pop(cluster_id, None)
            if provisioning is not None and provisioning is not asyncio.current_task():
                provisioning.cancel()
            self.spawn(cluster_id, self.teardown(cluster_id, S.FAILED, reason))

    async def teardown(self, cluster_id: str, final: S, reason: str | None = None) -> None:
        """Releases every node at once (the agents stop exactly the lease's processes, in parallel),
        then lets the launcher clear what it keeps of the cluster, then records the end."""
        started = self._clock()
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None:
            raise RuntimeError(f"cluster {cluster_id} is being torn down but is not in the database")
        leases = await self._store.leases_of(cluster_id)
        had_nodes = self._backend_of(cluster.spec).needs_launcher_teardown(leases)
        # All at once: the head's autoscaler cannot replace a worker meanwhile, since the cluster is
        # terminating and create_nodes refuses.
        await asyncio.gather(*(self._opener.close_lease(cluster_id, l) for l in leases))
        self._metrics.released(self._clock() - started)
        await self._events.record(
            cluster_id, domain.EventKind.RELEASED, f"all nodes released in {self._clock() - started:.1f} s"
        )
        if had_nodes:
            try:
                await asyncio.wait_for(
                    self._launcher.teardown(await self._launcher_config(cluster)), timeout=TEARDOWN_TIMEOUT_S
                )
            except Exception as exc:
                await self._events.record(
                    cluster_id, domain.EventKind.TEARDOWN_WARNING, f"launcher teardown: {views.describe(exc)}"
                )
        await self._store.set_cluster_status(cluster_id, final, self._clock(), reason=reason)
        await self._events.record(
            cluster_id,
            domain.EventKind.reached(final),
            f"{final.value} {self._clock() - started:.1f} s after the teardown began",
        )

    async def _launcher_config(self, cluster: records.Cluster) -> dict[str, Any]:
        backend = self._backend_of(cluster.spec)
        if backend.names_token_file:  # the config names a file: make sure this node has it
            await self._secrets.cluster_token_file(cluster.id)
        return backend.launcher_config(cluster, self._clock())

    def spawn(self, cluster_id: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[cluster_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(cluster_id) is t:
                self._tasks.pop(cluster_id, None)
            if not t.cancelled() and t.exception() is not None:
                logger.error("background work of cluster %s failed", cluster_id, exc_info=t.exception())

        task.add_done_callback(done)
