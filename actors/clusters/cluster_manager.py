"""ClusterManager: carries out buyer clusters' lifecycle (actors/clusters/lifecycle.py decides) and runs the reconcile
loop, composed of parts each given its collaborators: the buyer API (cluster_api.py), the node-provider API
(node_api.py), launches and teardowns (launches.py), the lease opener (lease_opener.py), the placer
(actors/machines/placer.py), the events (events.py); what differs per backend is behind actors/backends/backend.py."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from actors import metrics as metrics_mod
from actors.access import auth, cluster_files, platform_secrets
from actors.backends import backend, catalog
from actors.clusters import cluster_logs, launches, lifecycle, node_observer, quota_book
from actors.clusters import joins as joins_mod
from actors.clusters.cluster_api import BuyerApi
from actors.clusters.events import ClusterEvents
from actors.clusters.lease_opener import LeaseOpener, WorkSender
from actors.clusters.node_api import NodeProviderApi
from actors.db import cluster_store as cstore
from actors.db import records
from actors.machines import gpu_checks, liveness
from actors.machines.placer import Placer
from actors.settings import PlatformSettings
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole
EXPIRY_BACKSTOP_S = 10.0
SWEEP_INTERVAL_S = 60.0


class Registry(WorkSender, Protocol):
    """What the manager needs of the ProviderRegistry (the actor, or the plain class in tests)."""

    async def signing_secret(self) -> str: ...

    async def lease_liveness(self, machine_ids: Sequence[str] | None = None) -> liveness.LeaseLiveness: ...


class Reaper(Protocol):
    async def schedule(self, cluster_id: str) -> float | None: ...


Launcher = launches.Launcher  # what the manager is given; launches.py is what calls it


class ClusterManager:
    """Plain class with the logic; `actors.actor_classes` turns it into a detached actor."""

    def __init__(
        self,
        store: cstore.ClusterStore,
        settings: PlatformSettings,
        *,
        registry: Registry,
        launcher: launches.Launcher,
        reaper: Reaper | None = None,
        clock: Callable[[], float] = time.time,
        metrics: metrics_mod.Metrics | None = None,
        observer: node_observer.Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        secrets: platform_secrets.Secrets | None = None,
    ):
        self._store = store
        self._secrets = secrets or platform_secrets.for_settings(settings)
        self._metrics = metrics or metrics_mod.NullMetrics()
        self._settings = settings
        self._registry = registry
        self._reaper = reaper
        self._clock = clock
        self._quotas = quota_book.QuotaBook(store, settings, clock)
        # Joined (billed) = seen ALIVE in the cluster's own GCS, never a command's exit status.
        self._joins = joins_mod.JoinWatcher(
            store, self._secrets.cluster_token, observer or node_observer.NodeObserver(), clock=clock, sleep=sleep
        )
        self._logs = cluster_logs.ClusterLogs(
            store,
            max_bytes_per_cluster=settings.cluster_logs_max_bytes,
            retention_s=settings.cluster_logs_retention_s,
            clock=clock,
        )
        self._tokens: auth.TokenIssuer | None = None
        self._placement_lock = store.placement_lock()  # placements see each other's, in every process
        self._placer = Placer(store, settings, clock)
        self._events = ClusterEvents(store, clock)
        self._opener = LeaseOpener(
            store,
            registry=registry,
            secrets=self._secrets,
            logs=self._logs,
            placer=self._placer,
            placement_lock=self._placement_lock,
            events=self._events,
            clock=clock,
        )
        self._gpu_checks = gpu_checks.GpuChecker(
            store, settings, registry=registry, placement_lock=self._placement_lock, clock=clock
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}  # cluster id → its provisioning or teardown
        self._last_sweep = 0.0
        self._backends = catalog.backends(settings, self._tokens_or_fail)
        self._launches = launches.Launches(
            store,
            settings,
            launcher=launcher,
            opener=self._opener,
            events=self._events,
            secrets=self._secrets,
            metrics=self._metrics,
            backend_of=self._backend,
            tasks=self._tasks,
            clock=clock,
        )
        self._buyer = BuyerApi(
            store,
            settings,
            secrets=self._secrets,
            quotas=self._quotas,
            logs=self._logs,
            placer=self._placer,
            placement_lock=self._placement_lock,
            events=self._events,
            clock=clock,
            backend_of=self._backend,
            provision=lambda cluster_id: self._launches.spawn(cluster_id, self._launches.provision(cluster_id)),
            begin_teardown=self._launches.begin_teardown,
            schedule_expiry=self._schedule_expiry,
        )
        self._nodes = NodeProviderApi(
            store,
            registry=registry,
            joins=self._joins,
            opener=self._opener,
            placer=self._placer,
            placement_lock=self._placement_lock,
            events=self._events,
            clock=clock,
            reconcile=self._reconcile_cluster,
        )

    def _tokens_or_fail(self) -> auth.TokenIssuer:
        if self._tokens is None:
            raise RuntimeError("cluster manager not started")
        return self._tokens

    def _backend(self, spec: ClusterSpec) -> backend.Backend:
        return self._backends[spec.backend]

    def workers_opening_ahead(self) -> list[str]:
        """The clusters whose workers are opening while their head starts."""
        return self._nodes.opening_ahead()

    def background_work(self) -> dict[str, asyncio.Task[None]]:
        """The provisioning or teardown running for each cluster id (a copy)."""
        return dict(self._tasks)

    async def start(self) -> None:
        """Recovers: a launch in flight when the manager died cannot be resumed safely, so it is
        failed with a reason and torn down; an interrupted teardown is finished."""
        await self._store.open()
        self._tokens = auth.TokenIssuer(await self._registry.signing_secret(), clock=self._clock)
        await self._gpu_checks.recover()
        await self._placer.load()  # after: recover gives machines their first GPU status
        interrupted = await self._store.clusters_with_status(S.TERMINATING)
        for cluster in await self._store.clusters_with_status(S.PENDING, S.PROVISIONING):
            await self._launches.fail(cluster.id, "the control plane restarted while the cluster was provisioning")
        for cluster in interrupted:
            self._launches.spawn(cluster.id, self._launches.teardown(cluster.id, cluster.ending_as or S.TERMINATED))

    async def run_reconcile_loop(self) -> None:
        """Notices joined workers, lost machines and ended lifetimes; never dies."""
        while True:
            await asyncio.sleep(self._settings.reconcile_interval_s)
            try:
                await self.reconcile_once()
            except Exception:
                logger.exception("reconcile step failed")

    async def run_gpu_check_loop(self) -> None:
        """Starts the GPU checks that are due (actors/machines/gpu_checks.py); never dies."""
        while True:
            await asyncio.sleep(self._settings.gpu_check_interval_s)
            try:
                await self._gpu_checks.run_once()
            except Exception:
                logger.exception("GPU check step failed")

    async def reconcile_once(self) -> None:
        live = await self._store.clusters_with_status(S.PROVISIONING, S.RUNNING, S.DEGRADED)
        # First: running never precedes a join. Clusters it read and had nothing to ask are not read again.
        leases_read = await self._joins.observe_all([cluster.id for cluster in live])
        unread = [cluster.id for cluster in live if cluster.id not in leases_read]
        if unread:
            leases_read.update(await self._store.leases_of_clusters(unread))
        now = self._clock()
        # Only the machines this step judges: every machine's latest beat is a map of the whole fleet, which
        # takes the registry tens of ms to build and send at 10,000 machines, on the loop that serves heartbeats.
        heard = await self._registry.lease_liveness(_live_machines(leases_read.values()))
        for cluster in live:
            try:
                await self._reconcile_cluster(cluster, now, heard, leases_read.get(cluster.id))
            except Exception:
                logger.exception("reconcile of cluster %s failed", cluster.id)
        self._metrics.cluster_states(await self._store.count_clusters_by_status())
        if now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            await self.sweep()
        await self._placer.reload_if_due(now)

    async def sweep(self) -> dict[str, int]:
        """Releases what no live cluster owns: leases of ended clusters (a close that failed, a crash
        between steps) and launcher temp files of ended clusters. Agents drop their own strays when
        a heartbeat's answer names them (ProviderRegistry.heartbeat)."""
        closed = 0
        for lease in await self._store.active_leases():
            cluster = await self._store.get_cluster(lease.cluster_id)
            if cluster is None or cluster.status.is_terminal():
                await self._opener.close_lease(lease.cluster_id, lease)
                closed += 1
        try:
            await self._logs.purge()
        except Exception:
            logger.exception("purging old cluster logs failed")
        removed = cluster_files.remove_stale_launcher_files(
            self._settings.state_dir / cluster_files.LAUNCHER_TMP, older_than_s=SWEEP_INTERVAL_S
        )
        if closed or removed:
            logger.info("sweep: closed %d stray lease(s), removed %d launcher file(s)", closed, removed)
        return {"leases_closed": closed, "launcher_files_removed": removed}

    async def _reconcile_cluster(
        self,
        cluster: records.Cluster,
        now: float,
        heard: liveness.LeaseLiveness | None = None,
        leases: list[records.Lease] | None = None,
    ) -> None:
        """One step of lifecycle.decide for the cluster, carried out in order. heard: the registry's
        lease_liveness (silence cutoff, leases each agent holds); asked for when not given. leases: the
        cluster's, read in this step already; read when not given."""
        watches_leases = self._backend(cluster.spec).watches_leases
        machines: dict[str, str] = {}
        held: dict[str, liveness.Held] = {}
        if not (watches_leases and cluster.expires_at + EXPIRY_BACKSTOP_S > now):
            leases = []
        else:
            if leases is None:
                leases = await self._store.leases_of(cluster.id)
            live = [l.machine_id for l in leases if l.status.holds_capacity()]
            if heard is None:
                heard = await self._registry.lease_liveness(live)
            machines = await self._store.machine_statuses(live, heard["silence_cutoff"])
            held = heard["held"]
        for action in lifecycle.decide(
            cluster,
            leases,
            machines,
            now,
            watch_leases=watches_leases,
            provision_timeout_s=self._settings.provision_timeout_s,
            expiry_backstop_s=EXPIRY_BACKSTOP_S,
            held=held,
        ):
            if not await self._act(cluster, action, now):
                return

    async def _act(self, cluster: records.Cluster, action: lifecycle.Action, now: float) -> bool:
        """Carries out one action; False when the step ends there."""
        cid = cluster.id
        if isinstance(action, lifecycle.Expire):  # the ExpiryReaper missed it (e.g. it is restarting)
            await self.expire(cid, action.deadline)
            return False
        if isinstance(action, lifecycle.Fail):
            await self._launches.fail(cid, action.reason)
            return False
        if isinstance(action, lifecycle.LoseLease):
            if await self._store.end_lease(action.lease_id, domain.LeaseStatus.LOST, now):
                await self._events.record(
                    cid, domain.EventKind.LEASE_LOST, f"{action.role.value} node {action.lease_id} lost: {action.why}"
                )
                if action.fail_reason:
                    await self._launches.fail(cid, action.fail_reason)
                    return False
            return True
        if await self._store.set_cluster_status(cid, action.to, now, reason=action.reason, only_from=(action.from_,)):
            if (action.from_, action.to) == (S.PROVISIONING, S.RUNNING):
                self._metrics.provisioned(now - cluster.created_at)
            if action.clear_reason:
                await self._store.clear_reason(cid)
            await self._events.record(cid, action.event_kind, action.message)
        return True

    async def note_no_capacity(self, cluster_id: str, detail: str) -> None:
        cluster = await self._store.get_cluster(cluster_id)
        if cluster and cluster.status is S.DEGRADED and detail not in (cluster.reason or ""):
            reason = f"{(cluster.reason or '').split(';')[0]}; no matching machine is free: {detail}"
            await self._store.set_cluster_status(cluster_id, S.DEGRADED, self._clock(), reason=reason)

    # --- lifetimes (the ExpiryReaper calls these) ----------------------------------------

    async def expire(self, cluster_id: str, deadline: float) -> bool:
        late = self._clock() - deadline
        return await self._launches.begin_teardown(
            cluster_id, S.EXPIRED, f"its lifetime ended (teardown started {late:.3f} s after the deadline)"
        )

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None:
        await self._events.record(
            cluster_id,
            domain.EventKind.EXPIRY_WARNING,
            f"expires in {deadline - self._clock():.0f} s; POST /v1/clusters/{cluster_id}/extend to keep it",
        )

    async def _schedule_expiry(self, cluster_id: str) -> None:
        if self._reaper is None:
            return
        try:
            await self._reaper.schedule(cluster_id)
        except Exception:  # the reaper reloads every deadline from the database when it (re)starts
            logger.exception("could not reach the expiry reaper for %s", cluster_id)


def _live_machines(leases_by_cluster: Iterable[list[records.Lease]]) -> list[str]:
    """The machines the clusters' leases that hold capacity are on (what a reconcile step judges), sorted."""
    return sorted(
        {lease.machine_id for leases in leases_by_cluster for lease in leases if lease.status.holds_capacity()}
    )


def _expose(host: type, part: str, part_cls: type) -> None:
    """Makes every public coroutine method of part_cls a method of host that calls the same method of the host's
    part (the attribute `part`): the actor (actors.actor_classes.thin_actor) serves the host's methods."""

    # Forwarded calls take and return whatever the part's method does: it is looked up by name at run time.
    def forwarded(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def forward(self: object, *args: Any, **kwargs: Any) -> Any:
            return await getattr(getattr(self, part), name)(*args, **kwargs)

        return forward

    for name, method in inspect.getmembers(part_cls, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            assert not hasattr(host, name), f"{host.__name__}.{name} would hide {part_cls.__name__}.{name}"
            setattr(host, name, forwarded(name, method))


_expose(ClusterManager, "_buyer", BuyerApi)
_expose(ClusterManager, "_nodes", NodeProviderApi)
