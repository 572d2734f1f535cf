"""The node-provider API of buyer clusters (what MarketNodeProvider calls with a cluster-scoped credential):
list, create, tag, terminate nodes and run the launcher's commands on them. A part of ClusterManager, given
its collaborators."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from actors.access import auth
from actors.backends.market import launcher_config as market
from actors.clusters import cluster_views as views
from actors.clusters import joins as joins_mod
from actors.clusters.events import ClusterEvents
from actors.clusters.lease_opener import LeaseOpener, WorkSender
from actors.db import cluster_store as cstore
from actors.db import database, records
from actors.machines import placement
from actors.machines.placer import Placer
from dcl_core import commands, domain, errors, protocol

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole


class NodeProviderApi:
    def __init__(
        self,
        store: cstore.ClusterStore,
        *,
        registry: WorkSender,
        joins: joins_mod.JoinWatcher,
        opener: LeaseOpener,
        placer: Placer,
        placement_lock: database.Serial,
        events: ClusterEvents,
        clock: Callable[[], float],
        reconcile: Callable[[records.Cluster, float], Awaitable[None]],
    ):
        self._store = store
        self._registry = registry
        self._joins = joins
        self._opener = opener
        self._placer = placer
        self._placement_lock = placement_lock
        self._events = events
        self._clock = clock
        self._reconcile = reconcile  # one lifecycle step of the cluster (the manager's)
        self._opening_ahead: dict[
            str, asyncio.Task[None]
        ] = {}  # cluster id -> its workers opening while the head starts

    def opening_ahead(self) -> list[str]:
        """The clusters whose workers are opening while their head starts."""
        return sorted(self._opening_ahead)

    async def list_nodes(self, principal: auth.Principal, cluster_id: str) -> list[dict[str, Any]]:
        await self._scoped_cluster(principal, cluster_id)
        return [
            views.public_node(l)
            for l in await self._store.leases_of(cluster_id)
            if l.status is not domain.LeaseStatus.RESERVED
        ]

    async def create_nodes(
        self,
        principal: auth.Principal,
        cluster_id: str,
        role_value: domain.NodeRoleValue,
        node_type: str,
        tags: dict[str, str],
        count: int,
    ) -> list[dict[str, Any]]:
        role = domain.NodeRole(role_value)
        cluster = await self._scoped_cluster(principal, cluster_id)
        if not cluster.status.is_active():
            raise errors.Conflict(f"cluster {cluster_id} is {cluster.status.value}: no new nodes")
        spec = cluster.spec
        if role == N.WORKER:
            await self._workers_opened_ahead(cluster_id)
        async with self._placement_lock:
            leases = await self._store.leases_of(cluster_id)
            open_now = [l for l in leases if l.role is role and l.is_open]
            adopted = [l.with_tags(tags) for l in open_now if market.is_opened_ahead(l.tags)][:count]
            count -= len(adopted)
            # The credential sits on the head, where buyers' job drivers run: never more nodes than paid for.
            limit = spec.num_workers if role == N.WORKER else 1
            if len(open_now) + count > limit:
                raise errors.Conflict(
                    f"cluster {cluster_id} has {len(open_now)} open {role.value} node(s) of {limit}: cannot add {count}"
                )
            for lease in adopted:  # opened ahead, and the autoscaler asked before it listed them: they are these
                await self._store.set_lease_tags(lease.id, tags)
            reserved = [l for l in leases if l.role is role and l.status is domain.LeaseStatus.RESERVED][:count]
            missing = count - len(reserved)
            request = placement.spec_request(spec, role)
            if missing > 0:  # e.g. a replacement: reserve more on other machines, at the buyer's price
                extra = [placement.lease_row(a) for a in await self._placer.place(cluster_id, [request] * missing)]
                await self._store.add_leases(cluster_id, extra, self._clock())
                reserved += [await self._opener.existing_lease(l["id"]) for l in extra]
        opened = await asyncio.gather(*(self._opener.open_node(cluster, l, request, node_type, tags) for l in reserved))
        if role == N.HEAD:
            self._open_workers_ahead(cluster)
        return [views.public_node(l) for l in adopted + list(opened)]

    def _open_workers_ahead(self, cluster: records.Cluster) -> None:
        """Opens the reserved workers while the head starts. The head's autoscaler would launch them at its
        first update and start Ray on them only at its next (about 1 s later, lease opens included); tagged as
        it tags the workers it launches, they are in its first update's list and get `ray start` at once."""
        cid = cluster.id
        if cluster.spec.num_workers and cid not in self._opening_ahead:
            task = asyncio.get_running_loop().create_task(self._open_reserved_workers(cluster))
            self._opening_ahead[cid] = task
            task.add_done_callback(lambda _t: self._opening_ahead.pop(cid, None))

    async def _open_reserved_workers(self, cluster: records.Cluster) -> None:
        cid = cluster.id
        async with self._placement_lock:
            reserved = [
                l
                for l in await self._store.leases_of(cid)
                if l.role is N.WORKER and l.status is domain.LeaseStatus.RESERVED
            ]
        request, tags = placement.spec_request(cluster.spec, N.WORKER), market.opened_ahead_tags(cid)
        results = await asyncio.gather(
            *(self._opener.open_node(cluster, l, request, market.WORKER_NODE_TYPE, tags) for l in reserved),
            return_exceptions=True,
        )
        for failure in (r for r in results if isinstance(r, Exception)):
            # Nothing lost: the head's autoscaler asks for the workers it does not find (create_nodes).
            logger.info("cluster %s: a worker was not opened ahead: %s", cid, views.describe(failure))

    async def _workers_opened_ahead(self, cluster_id: str) -> None:
        """Waits for the opening ahead of the cluster's workers, if it is still going on."""
        pending = self._opening_ahead.get(cluster_id)
        if pending is not None:
            await asyncio.wait([pending])  # never cancelled by a caller that gives up

    async def set_node_tags(
        self, principal: auth.Principal, cluster_id: str, node_id: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        merged = market.claimed({**lease.tags, **tags})  # the launcher tags it: it knows the node now
        await self._store.set_lease_tags(node_id, merged)
        return views.public_node(lease.with_tags(merged))

    async def terminate_node(self, principal: auth.Principal, cluster_id: str, node_id: str) -> dict[str, Any]:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        await self._opener.close_lease(cluster_id, lease)
        return views.public_node(await self._opener.existing_lease(node_id))

    async def exec_on_node(
        self, principal: auth.Principal, cluster_id: str, node_id: str, body: protocol.Exec
    ) -> protocol.WorkResult:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        if not lease.is_open:
            if body.op == "run" and commands.stops_ray(body.cmd):
                return protocol.WorkResult(ok=True, exit_code=0, output="node already released")
            raise errors.Conflict(f"node {node_id} is {lease.status.value}: it runs no commands")
        payload = protocol.LeaseExec(lease_id=node_id, **body.model_dump())
        result = await self._registry.send_work(
            lease.machine_id, protocol.LEASE_EXEC, payload, timeout_s=payload.timeout_s + 10
        )
        if payload.op == "run" and commands.starts_ray(payload.cmd):
            if result.ok:
                # The agent's ok proves nothing: the node counts once the cluster's GCS lists it ALIVE.
                if not await self._joins.wait_joined(cluster_id, node_id):
                    return await self._not_joined(cluster_id, lease, result)
                # Running the moment the last node joins, not at the next reconcile tick.
                cluster = await self._store.get_cluster(cluster_id)
                if cluster is not None:
                    await self._reconcile(cluster, self._clock())
            else:
                await self._events.record(
                    cluster_id,
                    domain.EventKind.COMMAND_FAILED,
                    f"`ray start` failed on {lease.role.value} node {node_id} (exit "
                    f"{result.exit_code}): {views.tail(result.output)}",
                )
        return result

    async def _not_joined(
        self, cluster_id: str, lease: records.Lease, result: protocol.WorkResult
    ) -> protocol.WorkResult:
        """A `ray start` that reported ok but whose node never showed up ALIVE fails like any failed
        start: the head's launcher or autoscaler sees the error and replaces (or fails) the node."""
        message = (
            f"`ray start` reported success on {lease.role.value} node {lease.id} (machine "
            f"{lease.machine_id}), but its node was not ALIVE in the cluster's GCS within "
            f"{joins_mod.JOIN_WAIT_S:.0f} s: treated as a failed start"
        )
        await self._events.record(cluster_id, domain.EventKind.JOIN_FAILED, message)
        return protocol.WorkResult(
            ok=False, exit_code=result.exit_code, output=f"{result.output}\n{message}".lstrip("\n")
        )

    async def _scoped_cluster(self, principal: auth.Principal, cluster_id: str) -> records.Cluster:
        if principal.cluster_id != cluster_id and principal.role is not domain.Role.ADMIN:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        cluster = await self._store.get_cluster(cluster_id)
        if cluster is None:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        return cluster

    async def _scoped_lease(self, principal: auth.Principal, cluster_id: str, node_id: str) -> records.Lease:
        await self._scoped_cluster(principal, cluster_id)
        lease = await self._store.get_lease(node_id)
        if lease is None or lease.cluster_id != cluster_id:
            raise errors.NotFound(f"node {node_id} not found in cluster {cluster_id}")
        return lease
