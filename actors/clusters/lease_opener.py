"""LeaseOpener: opens a cluster's reserved nodes on their machines (another machine when one fails) and closes
them, keeping the logs they ship; every step is one of the cluster's events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import pydantic

from actors.access import platform_secrets
from actors.clusters import cluster_logs
from actors.clusters import cluster_views as views
from actors.clusters.events import ClusterEvents
from actors.db import cluster_store as cstore
from actors.db import database, records
from actors.machines import placement
from actors.machines.placer import Placer
from dcl_core import domain, errors, protocol

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole
LEASE_CLOSE_TIMEOUT_S = 30.0


class WorkSender(Protocol):
    """The registry's work channel, as far as opening and closing leases needs it."""

    async def send_work(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult: ...


class LeaseOpener:
    def __init__(
        self,
        store: cstore.ClusterStore,
        *,
        registry: WorkSender,
        secrets: platform_secrets.Secrets,
        logs: cluster_logs.ClusterLogs,
        placer: Placer,
        placement_lock: database.Serial,
        events: ClusterEvents,
        clock: Callable[[], float],
    ):
        self._store = store
        self._registry = registry
        self._secrets = secrets
        self._logs = logs
        self._placer = placer
        self._placement_lock = placement_lock
        self._events = events
        self._clock = clock

    async def open_node(
        self,
        cluster: records.Cluster,
        lease: records.Lease,
        request: placement.NodeRequest,
        node_type: str,
        tags: dict[str, str],
    ) -> records.Lease:
        """Opens a reserved node. A machine that fails to open it loses the reservation, and another is
        reserved (a different machine where one fits, placement.replacement) up to protocol.NODE_OPEN_ATTEMPTS
        times in all; each attempt is an event."""
        cid, failed = cluster.id, []
        for attempt in range(1, protocol.NODE_OPEN_ATTEMPTS + 1):
            opened = await self._open_lease(cluster, lease, node_type, tags, attempt)
            if opened is not None:
                return opened
            failed.append(lease.machine_id)
            if attempt == protocol.NODE_OPEN_ATTEMPTS:
                break
            async with self._placement_lock:  # the failed reservation is released: reserve the next atomically
                now = await self._store.get_cluster(cid)
                if now is None or not now.status.is_active():
                    raise errors.Conflict(f"cluster {cid} is {now and now.status.value}: no new nodes")
                try:
                    assignment = await self._placer.decide(
                        cid,
                        [request],
                        lambda caps: placement.replacement(caps, request, set(failed)),
                        avoid=frozenset(failed),
                    )
                except placement.InsufficientCapacity as exc:
                    await self._events.record(
                        cid,
                        domain.EventKind.NODE_RETRY_FAILED,
                        f"{request.role} node: no machine to retry on after attempt {attempt}: {exc}",
                    )
                    raise errors.Conflict(
                        f"{request.role} node of cluster {cid}: machine(s) {', '.join(failed)} "
                        f"could not open it and no other fits: {exc}"
                    ) from None
                retry = placement.lease_row(assignment)
                await self._store.add_leases(cid, [retry], self._clock())
            lease = await self.existing_lease(retry["id"])
            await self._events.record(
                cid,
                domain.EventKind.NODE_RETRY,
                f"{request.role} node: attempt {attempt + 1} of "
                f"{protocol.NODE_OPEN_ATTEMPTS} on machine {lease.machine_id} as node {lease.id} "
                f"(failed so far: {', '.join(failed)})",
            )
        raise errors.Conflict(
            f"{request.role} node of cluster {cid} could not be opened in {protocol.NODE_OPEN_ATTEMPTS} "
            f"attempts (machines {', '.join(failed)}); see the cluster's events"
        )

    async def close_lease(self, cluster_id: str, lease: records.Lease) -> None:
        """Closes the node on its machine if it is open, then ends the lease (idempotent)."""
        if lease.is_open:
            await self._close_on_machine(cluster_id, lease)
        if await self._store.end_lease(lease.id, domain.LeaseStatus.CLOSED, self._clock()):
            if lease.is_open:
                await self._events.record(
                    cluster_id, domain.EventKind.NODE_CLOSED, f"{lease.role.value} node {lease.id} released"
                )

    async def _open_lease(
        self, cluster: records.Cluster, lease: records.Lease, node_type: str, tags: dict[str, str], attempt: int
    ) -> records.Lease | None:
        """One try: the opened lease, or None when the machine could not open it (the lease is then lost)."""
        machine = await self._store.machine_summary(lease.machine_id)
        if machine is None:
            raise RuntimeError(f"lease {lease.id} is on machine {lease.machine_id}, which is not in the database")
        head = next(
            (l for l in await self._store.leases_of(cluster.id) if l.role is N.HEAD and l.is_open and l.ports),
            None,
        )
        payload = protocol.LeaseOpen(
            lease_id=lease.id,
            cluster_id=cluster.id,
            role=lease.role.value,
            gpu_indices=list(lease.gpus),
            resources={f"provider_{lease.machine_id}": 1.0},
            labels=views.node_labels(cluster.id, lease, machine),
            ray_auth_token=await self._secrets.cluster_token(cluster.id),
            head_gcs_port=head.ports["gcs"] if head and head.ports and lease.role is N.WORKER else None,
            cpus=lease.cpus,
            image=cluster.spec.image,
        )
        result = await self._registry.send_work(
            lease.machine_id, protocol.LEASE_OPEN, payload, timeout_s=protocol.LEASE_OPEN_TIMEOUT_S
        )
        if not result.ok:
            what = f"could not open {lease.role.value} node {lease.id}: {views.tail(result.output)}"
            await self._failed(cluster.id, lease, attempt, what)
            return None
        try:
            opened = protocol.LeaseOpened.model_validate(result.data)
        except pydantic.ValidationError as exc:
            # The platform would connect to what the agent reported: a host name or a non-unicast address is
            # refused, and the node it opened is closed again.
            await self._close_on_machine(cluster.id, lease)
            problems = "; ".join(str(e["msg"]) for e in exc.errors())
            what = f"reported an unusable address for {lease.role.value} node {lease.id}: {problems[:500]}"
            await self._failed(cluster.id, lease, attempt, what)
            return None
        if not await self._store.open_lease(
            lease.id, node_type=node_type, tags=tags, ports=opened.ports, node_ip=opened.node_ip, now=self._clock()
        ):
            # The cluster ended while the agent opened it: the teardown saw a reservation and closed nothing
            # on the machine, so the node just opened is closed here, and never counted as open.
            await self._close_opened_too_late(cluster.id, lease)
            raise errors.Conflict(
                f"cluster {cluster.id} ended while its {lease.role.value} node {lease.id} "
                "was opening: the node was closed again"
            )
        await self._events.record(
            cluster.id,
            domain.EventKind.NODE_OPENED,
            f"{lease.role.value} node {lease.id} opened on machine {lease.machine_id} ({opened.node_ip})",
        )
        return await self.existing_lease(lease.id)

    async def existing_lease(self, lease_id: str) -> records.Lease:
        """A lease this step just wrote (leases are never deleted)."""
        lease = await self._store.get_lease(lease_id)
        if lease is None:
            raise RuntimeError(f"lease {lease_id} was written but cannot be read back")
        return lease

    async def _close_opened_too_late(self, cluster_id: str, lease: records.Lease) -> None:
        if await self._close_on_machine(cluster_id, lease):
            await self._events.record(
                cluster_id,
                domain.EventKind.NODE_CLOSED,
                f"{lease.role.value} node {lease.id} was opened after the cluster ended: released",
            )

    async def _failed(self, cluster_id: str, lease: records.Lease, attempt: int, what: str) -> None:
        """The lease is lost and its cluster's events say what its machine did on this attempt."""
        await self._store.end_lease(lease.id, domain.LeaseStatus.LOST, self._clock())
        await self._events.record(
            cluster_id,
            domain.EventKind.LEASE_FAILED,
            f"attempt {attempt} of {protocol.NODE_OPEN_ATTEMPTS}: machine {lease.machine_id} {what}",
        )

    async def _close_on_machine(self, cluster_id: str, lease: records.Lease) -> bool:
        """Asks the lease's agent to close it (its logs are kept); False, with an event, when that failed."""
        payload = protocol.LeaseClose(lease_id=lease.id)
        result = await self._registry.send_work(
            lease.machine_id, protocol.LEASE_CLOSE, payload, timeout_s=LEASE_CLOSE_TIMEOUT_S
        )
        if not result.ok:
            # The agent cleans up leases the platform no longer knows when it returns (its heartbeat's
            # answer names them stale).
            await self._events.record(
                cluster_id,
                domain.EventKind.LEASE_CLOSE_FAILED,
                f"node {lease.id}: {views.tail(result.output)}",
            )
            return False
        await self._keep_logs(cluster_id, lease, result)
        return True

    async def _keep_logs(self, cluster_id: str, lease: records.Lease, result: protocol.WorkResult) -> None:
        try:
            kept = await self._logs.keep(cluster_id, lease, result.data.get("logs"))
        except Exception:
            logger.exception("keeping the logs of lease %s failed", lease.id)
            return
        if kept:
            await self._events.record(
                cluster_id,
                domain.EventKind.LOGS_KEPT,
                f"{kept} log file(s) of {lease.role.value} node {lease.id} kept: GET /v1/clusters/{cluster_id}/logs",
            )
