"""Buyer clusters (v1 and the seed's paths) and the node routes their launcher and autoscaler call."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from dcl_core import api, errors, ids
from dcl_core.cluster_spec import ClusterSpec
from serve_app import deps, head_proxy

router = APIRouter(tags=["clusters"])
seed_router = APIRouter(tags=["seed-compatible"])
node_router = APIRouter(tags=["node provider"])
proxy_router = APIRouter(tags=["cluster dashboard and metrics"])

ClusterId = Annotated[str, Path(pattern=ids.CLUSTER_ID_PATTERN, description="Cluster id, e.g. c-0123456789ab")]
NodeId = Annotated[str, Path(pattern=ids.LEASE_ID_PATTERN, description="Node (lease) id, e.g. l-0123456789ab")]
SeedClusterId = Annotated[str, Path(max_length=64, description="Cluster id")]


@router.post("/v1/clusters", status_code=status.HTTP_202_ACCEPTED, response_model=api.ClusterPublic)
async def create_cluster(body: ClusterSpec, principal: deps.BuyerPrincipal, clusters: deps.Clusters) -> dict[str, Any]:
    """Reserves machines (409 with what is available when they are short) and starts the launch."""
    return await clusters.create_cluster.remote(principal, body)


@router.get("/v1/clusters", response_model=list[api.ClusterPublic])
async def list_clusters(principal: deps.BuyerOrAdmin, clusters: deps.Clusters) -> list[dict[str, Any]]:
    return await clusters.list_clusters.remote(principal)


@router.get("/v1/clusters/{cluster_id}", response_model=api.ClusterPublic)
async def get_cluster(cluster_id: ClusterId, principal: deps.BuyerOrAdmin, reads: deps.ClusterReads) -> dict[str, Any]:
    return await reads((principal, cluster_id))


@router.delete("/v1/clusters/{cluster_id}", response_model=api.ClusterPublic)
async def delete_cluster(
    cluster_id: ClusterId, principal: deps.BuyerOrAdmin, clusters: deps.Clusters
) -> dict[str, Any]:
    """Idempotent; the teardown runs in the background (status terminating, then terminated)."""
    return await clusters.delete_cluster.remote(principal, cluster_id)


@router.post("/v1/clusters/{cluster_id}/extend", response_model=api.ClusterPublic)
async def extend(
    cluster_id: ClusterId, body: api.ClusterExtend, principal: deps.BuyerOrAdmin, clusters: deps.Clusters
) -> dict[str, Any]:
    """Moves the deadline by duration_s; 409 past the platform's maximum lifetime."""
    return await clusters.extend_cluster.remote(principal, cluster_id, body.duration_s)


@router.get("/v1/usage", response_model=None)
async def usage(
    principal: deps.CurrentPrincipal,
    clusters: deps.Clusters,
    start: Annotated[
        float | None,
        Query(ge=0, le=api.MAX_EPOCH_S, allow_inf_nan=False, description="Epoch seconds; default 30 days ago"),
    ] = None,
    end: Annotated[
        float | None, Query(ge=0, le=api.MAX_EPOCH_S, allow_inf_nan=False, description="Epoch seconds; default now")
    ] = None,
) -> dict[str, Any]:
    """Buyers: GPU/CPU-seconds and cost per cluster. Providers: supplied seconds and earnings per machine.
    Seconds count from a node joining Ray to it leaving."""
    end = time.time() if end is None else end
    start = end - 30 * 86_400 if start is None else start
    if start > end:
        raise errors.InvalidInput("start must not be after end")
    return await clusters.usage.remote(principal, start, end)


@router.get("/v1/clusters/{cluster_id}/connection", response_model=api.ClusterConnection)
async def connection(cluster_id: ClusterId, principal: deps.BuyerPrincipal, clusters: deps.Clusters) -> dict[str, Any]:
    """Dashboard/job URL, Ray client and GCS addresses, the cluster's Ray auth token, and what to export."""
    return await clusters.connection.remote(principal, cluster_id)


@router.get("/v1/clusters/{cluster_id}/events", response_model=list[api.ClusterEvent])
async def events(
    cluster_id: ClusterId,
    principal: deps.BuyerOrAdmin,
    clusters: deps.Clusters,
    after: Annotated[int, Query(ge=0, le=api.MAX_SQL_INT, description="Only events with a larger id")] = 0,
) -> list[dict[str, Any]]:
    return await clusters.cluster_events.remote(principal, cluster_id, after)


@router.get("/v1/clusters/{cluster_id}/logs", response_model=list[api.ClusterLogFile])
async def logs(cluster_id: ClusterId, principal: deps.BuyerOrAdmin, clusters: deps.Clusters) -> list[dict[str, Any]]:
    """The log files each node shipped as it was released (delete, expiry, replacement), kept after the
    cluster ended, up to the platform's size cap and retention. A lost machine ships nothing."""
    return await clusters.cluster_logs.remote(principal, cluster_id)


@router.get(
    "/v1/clusters/{cluster_id}/logs/file",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def log_file(
    cluster_id: ClusterId,
    principal: deps.BuyerOrAdmin,
    clusters: deps.Clusters,
    name: Annotated[
        str, Query(pattern=ids.LEASE_LOG_NAME_PATTERN, description="A name from GET .../logs, e.g. ray/raylet.out")
    ],
    node: Annotated[
        str | None, Query(pattern=ids.LEASE_ID_PATTERN, description="The node (lease) it came from")
    ] = None,
) -> PlainTextResponse:
    found = await clusters.cluster_log.remote(principal, cluster_id, name, node)
    return PlainTextResponse(found["text"])


@router.get(
    "/v1/clusters/{cluster_id}/logs/jobs/{job_id}",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def job_log(
    cluster_id: ClusterId,
    principal: deps.BuyerOrAdmin,
    clusters: deps.Clusters,
    job_id: Annotated[
        str, Path(pattern=ids.RAY_JOB_ID_PATTERN, description="The submission id `ray job submit` printed")
    ],
) -> PlainTextResponse:
    """A submitted job's driver output, as the head kept it (`ray job logs`, after the cluster ended)."""
    found = await clusters.job_log.remote(principal, cluster_id, job_id)
    return PlainTextResponse(found["text"])


# --- a buyer's own cluster, seen through the platform (serve_app/head_proxy.py) -----------

_PROXIED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}, "application/json": {}, "text/plain": {}}}
}


@proxy_router.get(
    "/v1/clusters/{cluster_id}/dashboard/{path:path}", response_class=StreamingResponse, responses=_PROXIED
)
async def dashboard(
    cluster_id: ClusterId,
    path: str,
    request: Request,
    principal: deps.BuyerOrAdmin,
    clusters: deps.Clusters,
    proxy: deps.HeadProxy,
) -> StreamingResponse:
    """GET any path of the cluster's Ray dashboard on its head (pages, `api/v0/nodes`, `api/jobs/`, job logs),
    with the cluster's Ray token added by the platform: the caller needs only its platform token. Read-only;
    submitting jobs goes to the head itself (`GET .../connection`)."""
    head_proxy.checked_path(path)  # refused before any actor call
    target = await clusters.proxy_target.remote(principal, cluster_id, "dashboard")
    return await proxy.fetch(
        head_proxy.dashboard_url(target, path, request.url.query), request.headers, token=target["token"]
    )


@proxy_router.get(
    "/v1/clusters/{cluster_id}/metrics",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(
    cluster_id: ClusterId,
    request: Request,
    principal: deps.BuyerOrAdmin,
    clusters: deps.Clusters,
    proxy: deps.HeadProxy,
    node: Annotated[
        str | None, Query(pattern=ids.LEASE_ID_PATTERN, description="A node (lease) of the cluster; default its head")
    ] = None,
) -> StreamingResponse:
    """The node's Ray metrics in Prometheus' text format (its metrics export port), for a scrape job with
    `authorization: {credentials_file: ...}` holding a platform token."""
    target = await clusters.proxy_target.remote(principal, cluster_id, "metrics", node)
    return await proxy.fetch(head_proxy.metrics_url(target), request.headers)


# --- the seed's paths (now behind a buyer's token) ---------------------------------------


@seed_router.post("/deploy_cluster", status_code=status.HTTP_202_ACCEPTED, response_model=None)
async def seed_deploy(body: api.SeedDeploy, principal: deps.BuyerPrincipal, clusters: deps.Clusters) -> dict[str, Any]:
    spec = ClusterSpec(num_workers=body.num_workers, duration_s=max(60, body.duration * 60))
    cluster = await clusters.create_cluster.remote(principal, spec)
    return {"cluster_id": cluster["id"]}


@seed_router.get("/cluster/{cluster_id}", response_model=api.SeedClusterInfo)
async def seed_cluster(
    cluster_id: SeedClusterId, principal: deps.BuyerPrincipal, clusters: deps.Clusters
) -> dict[str, Any]:
    c = await clusters.get_cluster.remote(principal, cluster_id)
    return {
        "cluster_id": c["id"],
        "status": c["status"],
        "head_node_ip": c["head_node_ip"],
        "expiration_time": c["expires_at"],
        "creation_time": c["created_at"],
        "num_workers": c["num_workers"],
    }


@seed_router.delete("/cluster/{cluster_id}", response_model=api.Message)
async def seed_delete(
    cluster_id: SeedClusterId, principal: deps.BuyerPrincipal, clusters: deps.Clusters
) -> dict[str, Any]:
    await clusters.delete_cluster.remote(principal, cluster_id)
    return {"message": "Cluster terminated successfully"}


# --- node provider routes (the cluster's own credential) ---------------------------------


@node_router.get("/v1/clusters/{cluster_id}/nodes", response_model=list[api.NodePublic])
async def list_nodes(
    cluster_id: ClusterId, principal: deps.NodeProviderPrincipal, clusters: deps.Clusters
) -> list[dict[str, Any]]:
    return await clusters.list_nodes.remote(principal, cluster_id)


@node_router.post(
    "/v1/clusters/{cluster_id}/nodes", status_code=status.HTTP_201_CREATED, response_model=list[api.NodePublic]
)
async def create_nodes(
    cluster_id: ClusterId, body: api.NodesCreate, principal: deps.NodeProviderPrincipal, clusters: deps.Clusters
) -> list[dict[str, Any]]:
    return await clusters.create_nodes.remote(principal, cluster_id, body.role, body.node_type, body.tags, body.count)


@node_router.patch("/v1/clusters/{cluster_id}/nodes/{node_id}", response_model=api.NodePublic)
async def set_node_tags(
    cluster_id: ClusterId,
    node_id: NodeId,
    body: api.NodeTags,
    principal: deps.NodeProviderPrincipal,
    clusters: deps.Clusters,
) -> dict[str, Any]:
    return await clusters.set_node_tags.remote(principal, cluster_id, node_id, body.tags)


@node_router.delete("/v1/clusters/{cluster_id}/nodes/{node_id}", response_model=api.NodePublic)
async def terminate_node(
    cluster_id: ClusterId, node_id: NodeId, principal: deps.NodeProviderPrincipal, clusters: deps.Clusters
) -> dict[str, Any]:
    return await clusters.terminate_node.remote(principal, cluster_id, node_id)


@node_router.post("/v1/clusters/{cluster_id}/nodes/{node_id}/exec", response_model=api.WorkResult)
async def exec_on_node(
    cluster_id: ClusterId,
    node_id: NodeId,
    body: api.NodeExec,
    principal: deps.NodeProviderPrincipal,
    clusters: deps.Clusters,
) -> api.WorkResult:
    """Runs a launcher command on the node through the agent holding it; answers when it finished."""
    return await clusters.exec_on_node.remote(principal, cluster_id, node_id, body)
