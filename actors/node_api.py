"""The node-provider API of buyer clusters (what MarketNodeProvider calls with a cluster-scoped credential):
list, create, tag, terminate nodes and run the launcher's commands on them. A part of ClusterManager."""

from __future__ import annotations

import asyncio
import logging

from actors import auth, cluster_views as views, placement
from actors import joins as joins_mod
from dcl_core import commands, domain, errors, protocol
from dcl_core.cluster_spec import ClusterSpec

logger = logging.getLogger(__name__)

S = domain.ClusterStatus
N = domain.NodeRole


class NodeProviderApi:
    """Mixed into ClusterManager, whose state (store, registry, placement lock, clock) and lease steps
    (_place, _open_node, _close_lease) it uses."""

    async def list_nodes(self, principal: auth.Principal, cluster_id: str) -> list[dict]:
        await self._scoped_cluster(principal, cluster_id)
        return [views.public_node(l) for l in await self._store.leases_of(cluster_id)
                if l["status"] != domain.LeaseStatus.RESERVED.value]

    async def create_nodes(self, principal: auth.Principal, cluster_id: str, role: str, node_type: str,
                           tags: dict, count: int) -> list[dict]:
        row = await self._scoped_cluster(principal, cluster_id)
        if not S(row["status"]).is_active():
            raise errors.Conflict(f"cluster {cluster_id} is {row['status']}: no new nodes")
        spec = ClusterSpec.model_validate_json(row["spec"])
        async with self._placement_lock:
            leases = await self._store.leases_of(cluster_id)
            # The credential sits on the head, where buyers' job drivers run: never more nodes than paid for.
            limit = spec.num_workers if role == N.WORKER else 1
            open_now = sum(1 for l in leases if l["role"] == role and l["status"] == domain.LeaseStatus.OPEN.value)
            if open_now + count > limit:
                raise errors.Conflict(f"cluster {cluster_id} has {open_now} open {role} node(s) of {limit}: "
                                      f"cannot add {count}")
            reserved = [l for l in leases
                        if l["role"] == role and l["status"] == domain.LeaseStatus.RESERVED.value][:count]
            missing = count - len(reserved)
            request = node_request(spec, role)
            if missing > 0:  # e.g. a replacement: reserve more on other machines, at the buyer's price
                extra = [views.lease_row(a) for a in await self._place(cluster_id, [request] * missing)]
                await self._store.add_leases(cluster_id, extra, self._clock())
                reserved += [await self._store.get_lease(l["id"]) for l in extra]
        opened = await asyncio.gather(*(self._open_node(row, l, request, node_type, tags) for l in reserved))
        return [views.public_node(l) for l in opened]

    async def set_node_tags(self, principal: auth.Principal, cluster_id: str, node_id: str, tags: dict) -> dict:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        merged = {**lease["tags"], **tags}
        await self._store.set_lease_tags(node_id, merged)
        return views.public_node({**lease, "tags": merged})

    async def terminate_node(self, principal: auth.Principal, cluster_id: str, node_id: str) -> dict:
        await self._scoped_lease(principal, cluster_id, node_id)
        await self._close_lease(cluster_id, await self._store.get_lease(node_id))
        return views.public_node(await self._store.get_lease(node_id))

    async def exec_on_node(self, principal: auth.Principal, cluster_id: str, node_id: str, body: dict) -> dict:
        lease = await self._scoped_lease(principal, cluster_id, node_id)
        if lease["status"] != domain.LeaseStatus.OPEN.value:
            if body.get("op") == "run" and commands.stops_ray(body.get("cmd", "")):
                return {"ok": True, "exit_code": 0, "output": "node already released", "data": {}}
            raise errors.Conflict(f"node {node_id} is {lease['status']}: it runs no commands")
        payload = protocol.LeaseExec(lease_id=node_id, **body)
        result = await self._registry.send_work(lease["machine_id"], protocol.LEASE_EXEC,
                                                payload.model_dump(), timeout_s=payload.timeout_s + 10)
        if payload.op == "run" and commands.starts_ray(payload.cmd):
            if result.get("ok"):
                # The agent's ok proves nothing: the node counts once the cluster's GCS lists it ALIVE.
                if not await self._joins.wait_joined(cluster_id, node_id):
                    return await self._not_joined(cluster_id, lease, result)
                # Running the moment the last node joins, not at the next reconcile tick.
                await self._reconcile_cluster(await self._store.get_cluster(cluster_id), self._clock())
            else:
                await self._event(cluster_id, "command_failed",
                                  f"`ray start` failed on {lease['role']} node {node_id} (exit "
                                  f"{result.get('exit_code')}): {views.tail(result.get('output', ''))}")
        return result

    async def _not_joined(self, cluster_id: str, lease: dict, result: dict) -> dict:
        """A `ray start` that reported ok but whose node never showed up ALIVE fails like any failed
        start: the head's launcher or autoscaler sees the error and replaces (or fails) the node."""
        message = (f"`ray start` reported success on {lease['role']} node {lease['id']} (machine "
                   f"{lease['machine_id']}), but its node was not ALIVE in the cluster's GCS within "
                   f"{joins_mod.JOIN_WAIT_S:.0f} s: treated as a failed start")
        await self._event(cluster_id, "join_failed", message)
        return {"ok": False, "exit_code": result.get("exit_code"),
                "output": f"{result.get('output', '')}\n{message}".lstrip("\n"), "data": {}}

    async def _scoped_cluster(self, principal: auth.Principal, cluster_id: str) -> dict:
        if principal.cluster_id != cluster_id and principal.role is not domain.Role.ADMIN:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        row = await self._store.get_cluster(cluster_id)
        if row is None:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        return row

    async def _scoped_lease(self, principal: auth.Principal, cluster_id: str, node_id: str) -> dict:
        await self._scoped_cluster(principal, cluster_id)
        lease = await self._store.get_lease(node_id)
        if lease is None or lease["cluster_id"] != cluster_id:
            raise errors.NotFound(f"node {node_id} not found in cluster {cluster_id}")
        return lease


def node_request(spec: ClusterSpec, role: str) -> placement.NodeRequest:
    """One more node of the cluster, at the buyer's price ceiling (stored with the spec)."""
    return placement.node_request(role, spec.gpus_per_worker, spec.cpus_per_worker, spec.gpu_model,
                                  max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
                                  max_price_per_cpu_hour=spec.max_price_per_cpu_hour,
                                  min_reliability=spec.min_reliability, verified_gpus_only=spec.verified_gpus_only)
