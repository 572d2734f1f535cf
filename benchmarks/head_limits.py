"""Figure 9: where one platform head saturates, past 10,000 machines (docs/scale.md reads these numbers).

In one process, on a real SQLite database (WAL, the platform's own settings) holding a simulated fleet
written in bulk (100,000 machines; --quick 10,000), with the ClusterManager and the Store the platform runs:
- the machine index's load (what ClusterManager.start does) and one placement among the fleet, with a
  tenth of the machines leased;
- concurrent cluster creates (ClusterManager.create_cluster: quota check, placement, the reservation's
  transaction, the token file), 1 to 64 at once: creates/s one manager sustains and their latency;
- the database's write rate for heartbeats (Store.record_heartbeat, one transaction each) against what
  the fleet offers (a beat every 10 s each).

What runs on the head but not here (Serve's proxy and replica, the actor hop, the registry) costs more per
request than all of this: the api_throughput and scale figures measure it. Stand-ins: the machines (no
agent answers for them) and the launcher (it never returns: each cluster stays provisioning with its
machines reserved, as while its head starts).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from actors import settings as settings_mod
from actors.access import auth
from actors.clusters import cluster_manager
from actors.db import schema
from actors.db import store as store_mod
from actors.machines import placement
from benchmarks import common, fleet, scale
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

NAME = "head_limits"
CONCURRENCY = (1, 8, 32, 64)
BUYERS = 100  # accounts the creates are spread over (each with quotas that never bind)
CREATE_WINDOW_S = 5.0
HEARTBEAT_WINDOW_S = 5.0


class _Registry:
    """What the manager asks of the registry while clusters are only created."""

    async def signing_secret(self) -> str:
        return "s" * 48

    async def lease_liveness(self) -> dict:
        return {"silence_cutoff": 0.0, "held": {}}

    async def send_work(self, machine_id: str, kind: str, payload: dict, timeout_s: float) -> dict:
        return {"ok": False, "output": "simulated machine"}


class _Launcher:
    """A head that never finishes starting: the cluster keeps its reservation."""

    async def create(self, config: dict) -> None:
        await asyncio.Event().wait()

    async def teardown(self, config: dict) -> None:
        pass


async def _buyers(store, n: int) -> list[auth.Principal]:
    now = time.time()
    first = 1000
    await store.insert_rows(
        schema.accounts,
        [
            {"id": first + i, "username": f"buyer-{i}", "password_hash": "x", "role": "buyer", "created_at": now}
            for i in range(n)
        ],
    )
    limits = {"max_clusters": 100_000, "max_gpus": 10_000_000, "max_cpus": 10_000_000, "max_gpu_hours": 1e12}
    await store.insert_rows(
        schema.account_quotas,
        [{"account_id": first + i, **limits, "updated_at": now, "updated_by": "bench"} for i in range(n)],
    )
    return [auth.Principal(first + i, f"buyer-{i}", domain.Role.BUYER) for i in range(n)]


async def _creates(manager, buyers: list[auth.Principal], concurrency: int, window_s: float) -> dict:
    """Closed loop: `concurrency` creators, each creating 1-worker 8-GPU clusters back to back."""
    latencies, failures = [], []
    deadline = time.monotonic() + window_s
    cpu0 = time.process_time()

    async def creator(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                await manager.create_cluster(
                    buyers[i % len(buyers)], ClusterSpec(num_workers=1, gpus_per_worker=8, duration_s=3600)
                )
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:120])
            i += concurrency

    t0 = time.monotonic()
    await asyncio.gather(*(creator(k) for k in range(concurrency)))
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "created": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        "ms": common.summary(ms, 1),
        "cpu_ms_per_create": round(cpu * 1000 / max(1, len(latencies)), 2),
        "failures": len(failures),
        "failure_examples": sorted(set(failures))[:3],
    }


async def _heartbeats(db_path: Path, machine_ids: list[str], window_s: float) -> dict:
    """Store.record_heartbeat back to back (one writer, one transaction a beat, as the registry writes them)."""
    store = store_mod.Store(db_path)
    usage = domain.MachineUsage.model_validate({})
    n = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < window_s:
        await store.record_heartbeat(machine_ids[n % len(machine_ids)], time.time(), usage, online_within_s=30.0)
        n += 1
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    await store.close()
    return {"beats": n, "per_s": round(n / elapsed, 1), "cpu_ms_per_beat": round(cpu * 1000 / n, 3)}


async def measure(workdir: Path, n: int, concurrency=CONCURRENCY, window_s: float = CREATE_WINDOW_S) -> dict:
    db_dir = Path(tempfile.mkdtemp(prefix="head-", dir=workdir))
    active = n // 10
    t0 = time.perf_counter()
    store = await fleet.seed_store(db_dir, n, active)
    seeded_s = time.perf_counter() - t0
    # The fleet's beats are not sent while clusters are created (their writes are measured apart): machines
    # stay online for the whole run through a long offline threshold instead.
    settings = settings_mod.PlatformSettings(
        state_dir=db_dir, heartbeat_interval_s=300, missed_heartbeats_offline=100, api_url="http://127.0.0.1:9"
    )
    manager = cluster_manager.ClusterManager(store, settings, registry=_Registry(), launcher=_Launcher())
    try:
        return await _measure(store, manager, db_dir, n, active, concurrency, window_s, seeded_s)
    finally:
        for task in manager.background_work().values():
            task.cancel()
        await asyncio.gather(*manager.background_work().values(), return_exceptions=True)
        await store.close()


async def _measure(
    store, manager, db_dir: Path, n: int, active: int, concurrency, window_s: float, seeded_s: float
) -> dict:
    t0 = time.perf_counter()
    await manager.start()  # loads the machine index
    load_s = time.perf_counter() - t0
    requests = placement.cluster_requests(1, 8, 1, None)
    place_ms = []
    for _ in range(10):
        t0 = time.perf_counter()
        await manager._placer.place("c-bench", requests)
        place_ms.append((time.perf_counter() - t0) * 1000)
    buyers = await _buyers(store, BUYERS)
    creates = []
    for c in concurrency:
        creates.append(await _creates(manager, buyers, c, window_s))
        common.log(
            f"{NAME}: {n:,} machines, {c} concurrent creates: {creates[-1]['per_s']}/s, "
            f"p99 {creates[-1]['ms'].get('p99')} ms"
        )
    machine_ids = [r["id"] for r in fleet.synthetic_rows(n)]
    beats = await _heartbeats(db_dir / settings_mod.DB_FILE, machine_ids, HEARTBEAT_WINDOW_S)
    return {
        "machines": n,
        "active_leases": active,
        "seed_s": round(seeded_s, 1),
        "index_load_s": round(load_s, 2),
        "place_ms": common.summary(place_ms, 2),
        "creates": creates,
        "heartbeat_writes": beats,
        "heartbeats_offered_per_s": n / scale.BEAT_EVERY_S,
    }


def run(ctx) -> list[common.Row]:
    n = 10_000 if ctx.quick else 100_000
    got = asyncio.run(measure(ctx.workdir, n, CONCURRENCY[:2] if ctx.quick else CONCURRENCY))
    rows = [
        common.Row(
            figure=NAME,
            metric=f"machine index load at start, {n:,} machines",
            value=got["index_load_s"],
            unit="s",
            details={"seed_s": got["seed_s"]},
        ),
        common.Row(
            figure=NAME,
            metric=f"place 8-GPU request through the ClusterManager, {n:,} machines, {got['active_leases']:,} leases",
            value=got["place_ms"]["p50"],
            unit="ms",
            target=f"<= {scale.TARGET_PLACE_MS:g} ms",
            met=got["place_ms"]["p50"] <= scale.TARGET_PLACE_MS,
            details=got["place_ms"],
        ),
    ]
    best = max(got["creates"], key=lambda c: c["per_s"])
    for c in got["creates"]:
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"cluster creates/s, {c['concurrency']} at once (manager, no API)",
                value=c["per_s"],
                unit="/s",
                details=c,
            )
        )
    beats = got["heartbeat_writes"]
    rows.append(
        common.Row(
            figure=NAME,
            metric="heartbeat writes/s the SQLite store takes (one transaction each)",
            value=beats["per_s"],
            unit="/s",
            target=f">= {got['heartbeats_offered_per_s']:,.0f}/s offered by {n:,} machines",
            met=beats["per_s"] >= got["heartbeats_offered_per_s"],
            details=beats,
        )
    )
    rows[-1].details["best_creates_per_s"] = best["per_s"]
    return rows
