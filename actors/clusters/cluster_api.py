"""The buyer API of clusters (create, list, get, delete, events, connection, extend), usage reports and
account quotas. A part of ClusterManager, given its collaborators and the manager's steps it sets going."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.access import auth, platform_secrets
from actors.backends import backend as backend_mod
from actors.clusters import cluster_logs, quota_book, quotas
from actors.clusters import cluster_views as views
from actors.clusters import usage as usage_mod
from actors.clusters.events import ClusterEvents
from actors.db import cluster_store as cstore
from actors.db import database, records
from actors.machines import placement
from actors.machines.placer import Placer
from actors.settings import PlatformSettings, launchable_ray_versions
from dcl_core import domain, errors, ids
from dcl_core.cluster_spec import ClusterSpec

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole


def check_owner(principal: auth.Principal, cluster_id: str, cluster: records.Cluster | None) -> records.Cluster:
    """The cluster if the principal may see it; another's cluster is as missing as none."""
    views.require_buyer_or_admin(principal)
    if cluster is None or (principal.role is not domain.Role.ADMIN and cluster.owner_id != principal.account_id):
        raise errors.NotFound(f"cluster {cluster_id} not found")
    return cluster


async def read_clusters(
    store: cstore.ClusterStore, reads: list[tuple[auth.Principal, str]]
) -> list[dict[str, Any] | Exception]:
    """Many get_cluster at once, as the API replica batches them (two queries, one hop): each read's cluster, or
    the error it alone gets (not the caller's, no such cluster). The ClusterManager's, and the API replica's own
    where the database is at hand (no actor hop: serve_app.app)."""
    found, leases = await store.clusters_with_leases([cluster_id for _, cluster_id in reads])
    answers: list[dict[str, Any] | Exception] = []
    for principal, cluster_id in reads:
        try:
            answers.append(
                views.public_cluster(check_owner(principal, cluster_id, found.get(cluster_id)), leases[cluster_id])
            )
        except errors.DClusterError as exc:
            answers.append(exc)
    return answers


def with_ray_version(spec: ClusterSpec) -> ClusterSpec:
    """The spec with the Ray version its cluster runs: the one asked for, if the platform can launch it (400
    naming those it can otherwise), else the platform's own."""
    launchable = launchable_ray_versions()
    if spec.ray_version is None:
        return spec.model_copy(update={"ray_version": launchable[0]})
    if spec.ray_version not in launchable:
        raise errors.InvalidInput(
            f"ray_version {spec.ray_version} cannot be launched here: this platform launches clusters of Ray "
            + ", ".join(launchable)
            + " (its launcher runs its own Ray)"
        )
    return spec


class BuyerApi:
    def __init__(
        self,
        store: cstore.ClusterStore,
        settings: PlatformSettings,
        *,
        secrets: platform_secrets.Secrets,
        quotas: quota_book.QuotaBook,
        logs: cluster_logs.ClusterLogs,
        placer: Placer,
        placement_lock: database.Serial,
        events: ClusterEvents,
        clock: Callable[[], float],
        backend_of: Callable[[ClusterSpec], backend_mod.Backend],
        provision: Callable[[str], None],
        begin_teardown: Callable[[str, domain.ClusterStatus, str], Awaitable[bool]],
        schedule_expiry: Callable[[str], Awaitable[None]],
    ):
        self._store = store
        self._settings = settings
        self._secrets = secrets
        self._quotas = quotas
        self._logs = logs
        self._placer = placer
        self._placement_lock = placement_lock
        self._events = events
        self._clock = clock
        self._backend = backend_of
        self._provision = provision  # starts the cluster's provisioning in the background
        self._begin_teardown = begin_teardown
        self._schedule_expiry = schedule_expiry

    async def create_cluster(self, principal: auth.Principal, spec: ClusterSpec) -> dict[str, Any]:
        views.require_buyer(principal)
        spec = with_ray_version(spec)
        backend = self._backend(spec)
        backend.check(spec)
        now = self._clock()
        cid = ids.new_cluster_id()
        async with self._placement_lock:  # quota checks and placements see each other's reservations
            await self._quotas.check(principal.account_id, quotas.cluster_demand(spec))
            placed: list[placement.Assignment] = []

            async def place(cluster_id: str, requests: list[placement.NodeRequest]) -> list[placement.Assignment]:
                assignments = await self._placer.place(cluster_id, requests)
                placed.extend(assignments)
                return assignments

            leases, summary = await backend.reserve(cid, spec, place)
            python = placed[0].request.python_version if placed else None
            if python:  # the Python its nodes run (placement chose it), kept with its spec: later nodes match it
                spec = spec.model_copy(update={"python_version": python})
            await self._store.create_cluster(
                cluster={
                    "id": cid,
                    "owner_id": principal.account_id,
                    "name": spec.name or cid,
                    "spec": spec.model_dump_json(),
                    "status": S.PENDING.value,
                    "expires_at": now + spec.duration_s,
                },
                leases=leases,
                event=summary,
                now=now,
            )
        await self._secrets.save_cluster_token(cid, ids.new_ray_auth_token())
        logger.info("cluster %s created for %s: %d worker(s)", cid, principal.username, spec.num_workers)
        await self._schedule_expiry(cid)
        self._provision(cid)
        return await self._public(await self._existing(cid))

    async def get_quota(self, principal: auth.Principal, account_id: int) -> dict[str, Any]:
        return await self._quotas.view(principal, account_id)

    async def set_quota(self, principal: auth.Principal, account_id: int, overrides: dict[str, Any]) -> dict[str, Any]:
        async with self._placement_lock:  # never between another request's check and its reservation
            return await self._quotas.set(principal, account_id, overrides)

    async def list_clusters(self, principal: auth.Principal) -> list[dict[str, Any]]:
        owner = None if principal.role is domain.Role.ADMIN else principal.account_id
        views.require_buyer_or_admin(principal)
        return [await self._public(c) for c in await self._store.list_clusters(owner)]

    async def get_cluster(self, principal: auth.Principal, cluster_id: str) -> dict[str, Any]:
        return await self._public(await self._own_cluster(principal, cluster_id))

    async def get_clusters(self, reads: list[tuple[auth.Principal, str]]) -> list[dict[str, Any] | Exception]:
        return await read_clusters(self._store, reads)

    async def delete_cluster(self, principal: auth.Principal, cluster_id: str) -> dict[str, Any]:
        """Idempotent: an ended cluster is returned as it is."""
        cluster = await self._own_cluster(principal, cluster_id)
        if cluster.status.is_active():
            await self._begin_teardown(cluster_id, S.TERMINATED, f"deleted by {principal.username}")
        return await self._public(await self._existing(cluster_id))

    async def cluster_events(
        self, principal: auth.Principal, cluster_id: str, after_id: int = 0
    ) -> list[dict[str, Any]]:
        await self._own_cluster(principal, cluster_id)
        return await self._store.events(cluster_id, after_id)

    async def cluster_logs(self, principal: auth.Principal, cluster_id: str) -> list[dict[str, Any]]:
        """What the cluster's nodes shipped as they closed (after the cluster ended too)."""
        await self._own_cluster(principal, cluster_id)
        return await self._logs.index(cluster_id)

    async def cluster_log(
        self, principal: auth.Principal, cluster_id: str, name: str, lease_id: str | None = None
    ) -> dict[str, Any]:
        cluster = await self._own_cluster(principal, cluster_id)
        found = await self._logs.text(cluster_id, lease_id, name)
        if found is None:
            when = (
                ""
                if cluster.status.is_terminal()
                else "; a node's logs are kept as it is released (while it runs: `ray job logs`)"
            )
            raise errors.NotFound(
                f"no log {name!r} kept for cluster {cluster_id}{f' node {lease_id}' if lease_id else ''}{when}"
            )
        return found

    async def job_log(self, principal: auth.Principal, cluster_id: str, job_id: str) -> dict[str, Any]:
        """A submitted job's driver output, as the head shipped it."""
        return await self.cluster_log(principal, cluster_id, cluster_logs.job_log_name(job_id))

    async def connection(self, principal: auth.Principal, cluster_id: str) -> dict[str, Any]:
        cluster = await self._own_cluster(principal, cluster_id)
        head = next(
            (
                l
                for l in await self._store.leases_of(cluster_id)
                if l.role is N.HEAD and l.is_open and l.joined and l.node_ip and l.ports
            ),
            None,
        )
        if not cluster.status.is_active() or head is None or not head.node_ip or not head.ports:
            raise errors.Conflict(
                f"cluster {cluster_id} is {cluster.status.value}: connection details exist once its "
                "head node has joined (see GET /v1/clusters/{id}/events)"
            )
        token = await self._secrets.cluster_token(cluster_id)
        return views.connection_details(
            head.node_ip, head.ports, token, f"{self._settings.api_url.rstrip('/')}/v1/clusters/{cluster_id}"
        )

    async def proxy_target(
        self, principal: auth.Principal, cluster_id: str, service: str, node_id: str | None = None
    ) -> dict[str, Any]:
        """Where the platform's proxy reaches the caller's own live cluster (views.PROXIED_SERVICES), and the
        cluster's Ray token for the dashboard; 404 for another account's cluster."""
        cluster = await self._own_cluster(principal, cluster_id)
        target = views.proxy_target(
            cluster_id, cluster.status, await self._store.leases_of(cluster_id), service, node_id
        )
        if service == "dashboard":
            target["token"] = await self._secrets.cluster_token(cluster_id)
        return target

    async def extend_cluster(self, principal: auth.Principal, cluster_id: str, duration_s: int) -> dict[str, Any]:
        cluster = await self._own_cluster(principal, cluster_id)
        if not cluster.status.is_active():
            raise errors.Conflict(
                f"cluster {cluster_id} is {cluster.status.value}: only a live cluster can be extended"
            )
        new_expiry = cluster.expires_at + duration_s
        limit = cluster.created_at + self._settings.max_lifetime_s
        if new_expiry > limit:
            room = max(0, int(limit - cluster.expires_at))
            raise errors.Conflict(
                f"a cluster lives at most {self._settings.max_lifetime_s} s; this one can be "
                f"extended by at most {room} s more"
            )
        async with self._placement_lock:  # quota checks see each other's reservations
            await self._quotas.check(cluster.owner_id, quotas.extension_demand(cluster.spec, duration_s))
            await self._store.set_expiry(cluster_id, new_expiry, self._clock())
        await self._events.record(
            cluster_id, domain.EventKind.EXTENDED, f"lifetime extended by {duration_s} s by {principal.username}"
        )
        await self._schedule_expiry(cluster_id)
        return await self._public(await self._existing(cluster_id))

    async def usage(self, principal: auth.Principal, start: float, end: float) -> dict[str, Any]:
        now = self._clock()
        if principal.role is domain.Role.PROVIDER:
            leases = await self._store.leases_in_window(start, end, provider_id=principal.account_id)
            summary = usage_mod.summarize(leases, group_by="machine_id", start=start, end=end, now=now)
            summary["total"]["earnings"] = summary["total"].pop("cost")
            for item in summary["items"]:
                item["earnings"] = item.pop("cost")
            return {"role": domain.Role.PROVIDER.value, **summary}
        owner = None if principal.role is domain.Role.ADMIN else principal.account_id
        leases = await self._store.leases_in_window(start, end, owner_id=owner)
        return {
            "role": principal.role.value,
            **usage_mod.summarize(leases, group_by="cluster_id", start=start, end=end, now=now),
        }

    async def _own_cluster(self, principal: auth.Principal, cluster_id: str) -> records.Cluster:
        return check_owner(principal, cluster_id, await self._store.get_cluster(cluster_id))

    async def _existing(self, cluster_id: str) -> records.Cluster:
        """A cluster this request just read or wrote (clusters are never deleted)."""
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None:
            raise RuntimeError(f"cluster {cluster_id} was written but cannot be read back")
        return cluster

    async def _public(self, cluster: records.Cluster) -> dict[str, Any]:
        return views.public_cluster(cluster, await self._store.leases_of(cluster.id))
