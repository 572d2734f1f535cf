"""Clusters and leases as the store hands them (actors.db.records), for tests of the code that reads them."""

from __future__ import annotations

import json
from typing import Any

from actors.db import records


def lease(**fields: Any) -> records.Lease:
    """A lease with plausible defaults; fields as their row columns (JSON columns as values)."""
    row = {
        "id": "l-000000000001",
        "cluster_id": "c-000000000001",
        "machine_id": "m-1",
        "role": "worker",
        "gpus": [],
        "cpus": 1,
        "price_per_gpu_hour": 0.0,
        "price_per_cpu_hour": 0.0,
        "status": "open",
        "node_type": None,
        "tags": {},
        "ports": None,
        "node_ip": None,
        "created_at": 0.0,
        "opened_at": None,
        "joined_at": None,
        "left_at": None,
    }
    unknown = set(fields) - set(row)
    assert not unknown, f"no lease column {unknown}"
    return records.Lease.from_row({**row, **fields})


def cluster(**fields: Any) -> records.Cluster:
    """A cluster with plausible defaults; spec as a dict of ClusterSpec fields."""
    row = {
        "id": "c-000000000001",
        "owner_id": 1,
        "name": "c-000000000001",
        "spec": {"num_workers": 1, "duration_s": 600},
        "status": "running",
        "reason": None,
        "created_at": 0.0,
        "updated_at": 0.0,
        "expires_at": 600.0,
        "running_at": None,
        "ended_at": None,
        "ending_as": None,
    }
    unknown = set(fields) - set(row)
    assert not unknown, f"no cluster column {unknown}"
    merged = {**row, **fields}
    return records.Cluster.from_row({**merged, "spec": json.dumps(merged["spec"])})
