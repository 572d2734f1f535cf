"""Pure helpers of the ClusterManager: public shapes, node labels, connection details, error text."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from typing import Any

from actors.access import auth
from actors.db import records
from configs import labels
from dcl_core import domain, errors, node_addresses


def connection_details(node_ip: str, ports: Mapping[str, int], token: str, proxy_base: str) -> dict[str, Any]:
    """proxy_base: the cluster's URL on the platform (API URL + /v1/clusters/<id>), for the proxied dashboard."""
    dashboard = f"http://{node_ip}:{ports['dashboard']}"
    env = {"RAY_ADDRESS": dashboard, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return {
        "dashboard_url": dashboard,
        "job_submission_url": dashboard,
        "ray_client_address": f"ray://{node_ip}:{ports['client_server']}",
        "gcs_address": f"{node_ip}:{ports['gcs']}",
        "ray_auth_token": token,
        "dashboard_proxy_url": f"{proxy_base}/dashboard/",
        "metrics_proxy_url": f"{proxy_base}/metrics",
        "env": env,
        "ray_job_submit": f"{exports} ray job submit --working-dir . -- python train.py",
    }


# What the platform's proxy may reach on a cluster's node: a service name -> the RayPorts field it listens on.
PROXIED_SERVICES = {"dashboard": "dashboard", "metrics": "metrics_export"}


def proxy_target(
    cluster_id: str, status: domain.ClusterStatus, leases: list[records.Lease], service: str, node_id: str | None
) -> dict[str, Any]:
    """Where the proxy connects for one of the cluster's own nodes: {"host", "port"} from the open lease's
    recorded address and port, never from the request. The dashboard is the head's; metrics are any node's."""
    if service not in PROXIED_SERVICES:
        raise errors.InvalidInput(f"no proxied service {service!r}; one of {', '.join(PROXIED_SERVICES)}")
    if not status.is_active():
        raise errors.Conflict(
            f"cluster {cluster_id} is {status.value}: its dashboard and metrics went with its nodes "
            "(its logs are kept: GET /v1/clusters/{id}/logs)"
        )
    live = [l for l in leases if l.is_open and l.joined_at and l.ports and l.node_ip]
    if node_id is None:
        node = next((l for l in live if l.role is domain.NodeRole.HEAD), None)
        if node is None:
            raise errors.Conflict(
                f"cluster {cluster_id}'s head node has not joined yet (see GET /v1/clusters/{{id}}/events)"
            )
    else:
        if service == "dashboard":
            raise errors.InvalidInput("the dashboard is the head's; only metrics take a node")
        node = next((l for l in live if l.id == node_id), None)
        if node is None:
            raise errors.NotFound(f"cluster {cluster_id} has no joined open node {node_id}")
    # An agent reports its node's address: only a literal unicast IP is ever connected to.
    try:
        host = node_addresses.unicast_ip(node.node_ip)
    except ValueError as exc:
        raise errors.Conflict(f"node {node.id} reported no usable address: {exc}") from None
    try:
        port = node_addresses.port((node.ports or {}).get(PROXIED_SERVICES[service]))
    except ValueError as exc:
        raise errors.Conflict(f"node {node.id} reported no usable {service} port: {exc}") from None
    return {"host": host, "port": port}


def node_labels(cluster_id: str, lease: records.Lease, machine: Mapping[str, Any]) -> dict[str, str]:
    return {
        "dcluster.io/cluster": cluster_id,
        "dcluster.io/role": lease.role.value,
        "dcluster.io/provider": labels.ray_label_value(machine["provider"]),
        "dcluster.io/machine": lease.machine_id,
        "dcluster.io/gpu": labels.ray_label_value(machine["gpu_model"]) if machine["gpus"] and lease.gpus else "none",
    }


def public_node(lease: records.Lease) -> dict[str, Any]:
    return {
        "id": lease.id,
        "role": lease.role.value,
        "status": lease.status.value,
        "node_type": lease.node_type,
        "tags": lease.tags,
        "node_ip": lease.node_ip,
        "machine_id": lease.machine_id,
        "gpus": len(lease.gpus),
        "cpus": lease.cpus,
        "joined": lease.joined,
        "joined_at": lease.joined_at,
        "left_at": lease.left_at,
    }


def public_cluster(cluster: records.Cluster, leases: list[records.Lease]) -> dict[str, Any]:
    """A cluster and its leases as the API's ClusterPublic dict."""
    spec = cluster.spec
    open_nodes = [l for l in leases if l.is_open]
    return {
        "id": cluster.id,
        "name": cluster.name,
        "status": cluster.status.value,
        "reason": cluster.reason,
        "num_workers": spec.num_workers,
        "gpus_per_worker": spec.gpus_per_worker,
        "gpu_model": spec.gpu_model,
        "cpus_per_worker": spec.cpus_per_worker,
        "duration_s": spec.duration_s,
        "backend": spec.backend,
        "max_price_per_gpu_hour": spec.max_price_per_gpu_hour,
        "max_price_per_cpu_hour": spec.max_price_per_cpu_hour,
        "ray_version": spec.ray_version,
        "python_version": spec.python_version,
        "created_at": cluster.created_at,
        "expires_at": cluster.expires_at,
        "running_at": cluster.running_at,
        "ended_at": cluster.ended_at,
        "workers_joined": sum(1 for l in open_nodes if l.role is domain.NodeRole.WORKER and l.joined),
        "head_node_ip": next((l.node_ip for l in open_nodes if l.role is domain.NodeRole.HEAD), None),
        "nodes": [public_node(l) for l in leases],
    }


def require_buyer(principal: auth.Principal) -> None:
    if principal.role is not domain.Role.BUYER:
        raise errors.Forbidden(f"clusters are for buyer accounts; you are signed in as {principal.role.value}")


def require_buyer_or_admin(principal: auth.Principal) -> None:
    if not principal.role.may_hold_clusters():
        raise errors.Forbidden(f"clusters are for buyer accounts; you are signed in as {principal.role.value}")


def tail(text: str, limit: int = 400) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    cause = getattr(exc, "cause", None) or exc
    return tail(f"{type(cause).__name__}: {cause}")
