"""The simulated fleet the scale figures measure: machine i's shape, its registration through the API, and the
same fleet written in bulk to a real database (machines, active leases and their clusters)."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from pathlib import Path

import httpx

from actors import settings as settings_mod
from actors.db import cluster_store, schema
from dcl_core import domain

REGISTER_CONCURRENCY = 32

# The simulated fleet, by machine index: a quarter each of 8x H100, 4x A100, 1x RTX 4090, CPU-only.
_SHAPES = [
    (8, "NVIDIA H100 80GB HBM3", 2.5),
    (4, "NVIDIA A100-SXM4-80GB", 1.4),
    (1, "NVIDIA GeForce RTX 4090", 0.4),
    (0, None, 0.0),
]


def machine_shape(i: int) -> tuple[int, str | None, float]:
    gpus, model, price = _SHAPES[i % len(_SHAPES)]
    return gpus, model, round(price * (0.8 + 0.4 * ((i * 7919) % 100) / 100), 3)


def register_body(i: int, key: str) -> dict:
    gpus, model, price = machine_shape(i)
    spec = {
        "hostname": f"sim-{i}",
        "os": "Linux",
        "arch": "x86_64",
        "cpus": 64 if gpus else 16,
        "memory_mb": 512_000,
        "gpus_declared": True,
        "gpus": [{"index": g, "model": model, "memory_mb": 81_559} for g in range(gpus)],
    }
    return {
        "machine_key": key,
        "name": f"sim-{i}",
        "spec": spec,
        "price_per_gpu_hour": price,
        "price_per_cpu_hour": 0.05,
    }


async def register_fleet(url: str, tokens: list[str], n: int) -> dict:
    """POST /v1/machines n times (REGISTER_CONCURRENCY at once); machine i belongs to provider i % len(tokens)."""
    ids: list[str | None] = [None] * n
    keys: list[str | None] = [None] * n  # each machine's agent key, as its agent would beat with
    errors: list[str] = []
    counter = itertools.count()
    run = secrets.token_hex(4)
    limits = httpx.Limits(max_connections=REGISTER_CONCURRENCY, max_keepalive_connections=REGISTER_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker():
            while (i := next(counter)) < n:
                headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
                for _attempt in range(3):
                    try:
                        r = await client.post(
                            "/v1/machines", json=register_body(i, f"sim-{run}-{i:06d}"), headers=headers
                        )
                        if r.status_code == 201:
                            ids[i], keys[i] = r.json()["id"], r.json()["agent_key"]
                            break
                        errors.append(f"{r.status_code} {r.text[:100]}")
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc)[:100])
                if len(errors) > 50:
                    raise RuntimeError(f"registration keeps failing: {errors[-3:]}")

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(REGISTER_CONCURRENCY)))
        elapsed = time.monotonic() - t0
    return {"ids": ids, "keys": keys, "elapsed_s": elapsed, "errors": len(errors), "per_s": n / elapsed}


# --- in bulk, straight to the database ----------------------------------------------------


def synthetic_rows(n: int) -> list[dict]:
    """Machines as cluster_store.online_machines returns them."""
    rows = []
    for i in range(n):
        gpus, model, price = machine_shape(i)
        rows.append(
            {
                "id": f"m-{i:012x}",
                "provider": f"prov-{i % 10}",
                "gpu_model": model,
                "gpus": gpus,
                "cpus": 64 if gpus else 16,
                "price_per_gpu_hour": price,
                "price_per_cpu_hour": 0.05,
            }
        )
    return rows


def synthetic_leases(rows: list[dict], count: int) -> list[dict]:
    """count active leases, each taking a whole machine's GPUs (or 1 CPU) on machines 0..count-1."""
    return [
        {
            "id": f"l-{j:012x}",
            "cluster_id": f"c-{j // 4:012x}",
            "machine_id": rows[j]["id"],
            "role": "worker",
            "gpus": list(range(rows[j]["gpus"])),
            "cpus": 1,
        }
        for j in range(count)
    ]


async def seed_store(db_dir: Path, n: int, active: int) -> cluster_store.ClusterStore:
    """A real SQLite database holding n online machines (10 providers) and `active` active leases, written
    in bulk (a simulated fleet: registration through the API is measured by `run`)."""
    store = cluster_store.ClusterStore(db_dir / settings_mod.DB_FILE)
    now = time.time()
    await store.insert_rows(
        schema.accounts,
        [
            {"id": p + 1, "username": f"prov-{p}", "password_hash": "x", "role": "provider", "created_at": now}
            for p in range(10)
        ],
    )
    rows = synthetic_rows(n)
    # Registered an hour ago (the spec and GPU status registration gives: GPUs declared), heartbeating since.
    await store.insert_rows(
        schema.machines,
        [
            {
                "id": r["id"],
                "provider_id": i % 10 + 1,
                "machine_key": r["id"],
                "name": r["id"],
                "spec": json.dumps(register_body(i, r["id"])["spec"]),
                "gpu_model": r["gpu_model"],
                "gpus": r["gpus"],
                "cpus": r["cpus"],
                "memory_mb": 512_000,
                "price_per_gpu_hour": r["price_per_gpu_hour"],
                "price_per_cpu_hour": r["price_per_cpu_hour"],
                "status": "online",
                "registered_at": now - 3600,
                "last_heartbeat": now,
                "changed_at": now - 3600,
                "gpu_check": domain.GpuVerification.DECLARED.value
                if r["gpus"]
                else domain.GpuVerification.NO_GPUS.value,
            }
            for i, r in enumerate(rows)
        ],
    )
    leases = synthetic_leases(rows, active)
    clusters = sorted({l["cluster_id"] for l in leases})
    await store.insert_rows(
        schema.clusters,
        [
            {
                "id": c,
                "owner_id": 1,
                "name": c,
                "spec": "{}",
                "status": "running",
                "created_at": now,
                "updated_at": now,
                "expires_at": now + 3600,
            }
            for c in clusters
        ],
    )
    await store.insert_rows(
        schema.leases,
        [
            {
                "id": l["id"],
                "cluster_id": l["cluster_id"],
                "machine_id": l["machine_id"],
                "role": l["role"],
                "gpus": json.dumps(l["gpus"]),
                "cpus": l["cpus"],
                "status": "open",
                "created_at": now,
            }
            for l in leases
        ],
    )
    return store
