"""Render the cluster-launcher config of a buyer's sub-cluster on the market backend (configs/market.yaml), and
tag the workers the platform opens while its head starts."""

from __future__ import annotations

import re
from typing import Any

from configs import labels, templates
from dcl_core import cluster_spec, ids

TEMPLATE = "market.yaml"
PROVIDER_MODULE = "worker.node_provider.market_provider.MarketNodeProvider"
WORKER_NODE_TYPE = "worker"  # market.yaml's worker node type
# A worker the platform opened while the head starts, that no launcher has claimed yet.
OPENED_AHEAD_TAG = "dcluster-opened-ahead"
# Ray's tags (ray.autoscaler.tags), written out: the control plane stays free of Ray (a unit test compares them).
_TAG_NODE_KIND, _TAG_NODE_NAME, _TAG_NODE_STATUS = "ray-node-type", "ray-node-name", "ray-node-status"
_TAG_USER_NODE_TYPE = "ray-user-node-type"
_CLUSTER_ID_RE = re.compile(ids.CLUSTER_ID_PATTERN)


def render_market_config(
    *,
    cluster_id: str,
    spec: cluster_spec.ClusterSpec,
    platform_url: str,
    provider_token: str,
    platform_ca: str | None = None,
) -> dict[str, Any]:
    """The launcher config for `create_or_update_cluster(config, no_config_cache=True)`.

    Head: CPU 0 / GPU 0 (buyers' work runs on workers). Workers: min = max = spec.num_workers, each
    with spec's CPUs and GPUs (GPU left out when 0) and the label dcluster.io/cluster=<cluster id>. platform_ca:
    the certificate the node provider pins when platform_url is https (None: the system's trust store).
    """
    if not _CLUSTER_ID_RE.match(cluster_id):
        raise ValueError(f"cluster_id {cluster_id!r} is not a cluster id (c-<12 hex>)")
    if not platform_url or not provider_token:
        raise ValueError("platform_url and provider_token are required: the head's autoscaler calls the platform")
    config = templates.load(TEMPLATE)
    config["cluster_name"] = cluster_id
    config["max_workers"] = spec.num_workers
    config["provider"].update(platform_url=platform_url.rstrip("/"), cluster_id=cluster_id, token=provider_token)
    if platform_url.startswith("https://") and platform_ca:
        config["provider"]["platform_ca"] = platform_ca
    worker = config["available_node_types"][WORKER_NODE_TYPE]
    worker["resources"] = {"CPU": spec.cpus_per_worker}
    if spec.gpus_per_worker:
        worker["resources"]["GPU"] = spec.gpus_per_worker
    worker["labels"] = {labels.CLUSTER_LABEL: cluster_id}
    worker["min_workers"] = worker["max_workers"] = spec.num_workers
    return config


def opened_ahead_tags(cluster_id: str) -> dict[str, str]:
    """Tags of a worker opened by the platform while the cluster's head starts: the tags the head's autoscaler
    gives a worker it launches (Ray's NodeLauncher), so that its first update finds the worker and starts Ray
    on it, less the launch-config hash (market.yaml turns that check off), plus OPENED_AHEAD_TAG."""
    return {
        _TAG_NODE_NAME: f"ray-{cluster_id}-worker",
        _TAG_NODE_KIND: "worker",
        _TAG_NODE_STATUS: "uninitialized",
        _TAG_USER_NODE_TYPE: WORKER_NODE_TYPE,
        OPENED_AHEAD_TAG: "1",
    }


def is_opened_ahead(tags: dict[str, Any]) -> bool:
    """A worker opened ahead that no launcher has claimed (tagged, or asked for through create)."""
    return tags.get(OPENED_AHEAD_TAG) == "1"


def claimed(tags: dict[str, Any]) -> dict[str, Any]:
    """The tags once a launcher has claimed the node: without OPENED_AHEAD_TAG."""
    return {k: v for k, v in tags.items() if k != OPENED_AHEAD_TAG}
