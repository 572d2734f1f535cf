"""Figure 5: control-plane scale. 10,000 simulated machines registered through the API and heartbeating
every 10 s with their agent keys (1,000 heartbeats/s on a fixed schedule, wrk) for 60 s: every beat
answered, p99 latency, platform CPU and RSS beside the load generator's own CPU.
Then the time to place an 8-GPU request among 10,000 machines: the pure decision
(actors.machines.placement), the ClusterManager's whole decision path on a real SQLite database, and
POST /v1/clusters on the running platform.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import tempfile
import time
from pathlib import Path

from actors import settings as settings_mod
from actors.clusters import cluster_manager
from actors.db import store as store_mod
from actors.machines import placement
from actors.machines import registry as registry_mod
from benchmarks import api_throughput, common, fleet, platform_session, wrk

NAME = "scale"
TARGET_P99_MS = 100.0
TARGET_PLACE_MS = 10.0
BEAT_EVERY_S = 10.0
HEARTBEAT_CONNECTIONS = 128
AGENT_TIMEOUT_S = 10.0  # dcluster.Client's request timeout: a beat waiting longer is lost

# --- placement ----------------------------------------------------------------------------


def time_pure_placement(n: int, active: int, reps: int) -> list[float]:
    rows = fleet.synthetic_rows(n)
    leases = fleet.synthetic_leases(rows, active)
    requests = placement.cluster_requests(1, 8, 1, None)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        caps = placement.capacities(rows, leases)
        assignments = placement.place(caps, requests)
        out.append(time.perf_counter() - t0)
        assert any(a.request.gpus == 8 for a in assignments)
    return out


async def time_manager_placement(db_dir: Path, n: int, active: int, reps: int) -> dict:
    """ClusterManager._place (machine index, the active leases and the machines not online read fresh, then
    the decision) on a real SQLite database holding n machines and `active` active leases; `load_s`: the
    index's load from the database, as ClusterManager.start does it."""
    store = await fleet.seed_store(db_dir, n, active)
    settings = settings_mod.PlatformSettings(state_dir=db_dir, heartbeat_interval_s=BEAT_EVERY_S)
    manager = cluster_manager.ClusterManager(store, settings, registry=None, launcher=None)
    t0 = time.perf_counter()
    await manager._placer.load()
    load_s = time.perf_counter() - t0
    requests = placement.cluster_requests(1, 8, 1, None)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await manager._placer.place("c-" + secrets.token_hex(6), requests)
        out.append(time.perf_counter() - t0)
    await store.close()
    return {"place_s": out, "load_s": load_s}


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def placement_rows(ctx, n: int) -> list[common.Row]:
    reps = 10 if ctx.quick else 30
    rows = []
    pure = _ms(time_pure_placement(n, 0, reps))
    pure_leased = _ms(time_pure_placement(n, n // 10, reps))
    p50 = common.median(pure)
    # Placement among every machine, as before the machine index: a reference, not the target (the manager's
    # path below is what a create runs, and what the target is about).
    rows.append(
        common.Row(
            figure=NAME,
            metric=f"place 8-GPU request among all {n:,} machines: decision only (reference)",
            value=p50,
            unit="ms",
            details={"ms": common.summary(pure, 2), f"ms_with_{n // 10}_active_leases": common.summary(pure_leased, 2)},
        )
    )
    for active in (0, n // 10):
        db_dir = Path(tempfile.mkdtemp(prefix="place-", dir=ctx.workdir))
        timed = asyncio.run(time_manager_placement(db_dir, n, active, reps))
        full = _ms(timed["place_s"])
        p50 = common.median(full)
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"place 8-GPU request: ClusterManager path incl. SQLite, {active:,} active leases",
                value=p50,
                unit="ms",
                target=f"<= {TARGET_PLACE_MS:g} ms",
                met=p50 <= TARGET_PLACE_MS,
                details={
                    "ms": common.summary(full, 2),
                    "index_load_ms (once, at start)": round(timed["load_s"] * 1000, 1),
                },
            )
        )
    return rows


async def time_offers_view(db_dir: Path, n: int, reps: int) -> dict:
    """ProviderRegistry.list_offers (GET /v1/offers) on n machines, and the longest stall of the registry's
    event loop meanwhile (a 1 ms ticker beside it: what a heartbeat waiting on that loop would see)."""
    await (await fleet.seed_store(db_dir, n, 0)).close()  # the registry opens the database itself
    settings = settings_mod.PlatformSettings(state_dir=db_dir, heartbeat_interval_s=BEAT_EVERY_S)
    db = store_mod.Store(settings.db_path)
    reg = registry_mod.ProviderRegistry(db, settings)
    took, stalls = [], []
    try:
        for _ in range(reps):
            lags: list[float] = []
            done = asyncio.Event()

            async def ticker():
                while not done.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    lags.append(time.perf_counter() - t - 0.001)

            task = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            await reg.list_offers()
            took.append(time.perf_counter() - t0)
            done.set()
            await task
            stalls.append(max(lags, default=0.0))
    finally:
        await db.close()
    return {"list_offers_s": took, "longest_stall_s": stalls}


def offers_rows(ctx, n: int) -> list[common.Row]:
    timed = asyncio.run(
        time_offers_view(Path(tempfile.mkdtemp(prefix="offers-", dir=ctx.workdir)), n, 3 if ctx.quick else 10)
    )
    return [
        common.Row(
            figure=NAME,
            metric=f"offers view (GET /v1/offers) among {n:,} machines, in process",
            value=common.median(_ms(timed["list_offers_s"])),
            unit="ms",
            details={"ms": common.summary(_ms(timed["list_offers_s"]), 1)},
        ),
        common.Row(
            figure=NAME,
            metric="the same: longest stall of the registry's event loop (heartbeats wait)",
            value=common.median(_ms(timed["longest_stall_s"])),
            unit="ms",
            details={"ms": common.summary(_ms(timed["longest_stall_s"]), 1)},
        ),
    ]


def api_placement(session, reps: int = 3) -> dict:
    """POST /v1/clusters (1 worker with 8 GPUs) right after the heartbeats, deleted at once."""
    offers = session.admin.ok("GET", "/v1/offers")
    latencies, statuses = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = session.buyer.post("/v1/clusters", json={"num_workers": 1, "gpus_per_worker": 8, "duration_s": 600})
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses.append(r.status_code)
        if r.status_code == 202:
            cluster = r.json()
            session.lease_ids.update(n["id"] for n in cluster["nodes"])
            session.buyer.ok("DELETE", f"/v1/clusters/{cluster['id']}")
            session.wait_ended(cluster["id"], timeout_s=120)
    return {
        "ms": [round(x, 1) for x in latencies],
        "statuses": statuses,
        "online_machines_by_model": {o["gpu_model"] or "cpu-only": o["machines"] for o in offers},
    }


# --- the figure ---------------------------------------------------------------------------


def run(ctx) -> list[common.Row]:
    n = ctx.machines or (500 if ctx.quick else 10_000)
    duration = ctx.window_s or (10.0 if ctx.quick else 60.0)
    rate = n / BEAT_EVERY_S
    n_providers = 2 if ctx.quick else 10
    on = f" [{ctx.layout}]"  # which platform every row below measured
    rows = []
    if ctx.layout == platform_session.PlatformLayout():
        try:
            rows = placement_rows(ctx, n) + offers_rows(ctx, n)  # in-process SQLite, no platform: first
        except Exception as exc:
            rows = [common.error_row(NAME, exc)]
    try:
        wrk.binary()
    except wrk.WrkMissing as exc:  # the heartbeats need wrk: an error row saying how to install it
        return rows + [common.error_row(NAME, exc)]
    session = ctx.platform()
    tokens = [
        session.new_account("provider", f"bench-sim-{p}-{secrets.token_hex(3)}").token for p in range(n_providers)
    ]
    common.log(f"{NAME}: registering {n:,} simulated machines ({n_providers} provider accounts)")
    reg = asyncio.run(fleet.register_fleet(session.url, tokens, n))
    ids = [i for i in reg["ids"] if i]
    common.log(
        f"{NAME}: registered {len(ids):,} in {reg['elapsed_s']:.0f} s ({reg['per_s']:.0f}/s); "
        f"heartbeats at {rate:.0f}/s for {duration:.0f} s"
    )
    body = json.dumps(api_throughput.HEARTBEAT_BODY)
    requests = [
        {
            "method": "POST",
            "path": f"/v1/machines/{mid}/heartbeat",
            "body": body,
            "headers": {"Authorization": f"Bearer {key}"},
        }
        for mid, key in zip(reg["ids"], reg["keys"], strict=True)
        if mid
    ]
    random.Random(0).shuffle(requests)  # machines beat in no particular order
    spec = {
        "mode": "open",
        "port": int(session.url.rsplit(":", 1)[1]),
        "connections": HEARTBEAT_CONNECTIONS,
        "rate": rate,
        "duration_s": duration,
        "timeout_s": AGENT_TIMEOUT_S,
        "requests": requests,
    }
    wrk.run({**spec, "duration_s": 2.0}, ctx.workdir)  # warm-up: connections open
    with (
        common.ResourceSampler(session.platform_processes, interval_s=1.0, refresh_s=10.0) as sampler,
        common.ResourceSampler(session.database_processes, interval_s=1.0, refresh_s=5.0) as db_sampler,
    ):
        res = wrk.run(spec, ctx.workdir)
    load = sampler.report()
    db_load = db_sampler.report() if session.pg is not None else None
    common.log(
        f"{NAME}: {res['ok_per_s']:.0f} heartbeats/s answered, p99 {res['latency'].get('p99_ms')} ms; "
        f"platform CPU {load['cpu_percent_mean']}%, wrk CPU {res['loadgen_cpu_s']} s"
    )
    p99 = res["latency"].get("p99_ms")
    scheduled = rate * res["duration_s"]
    unanswered = (
        res["requests"]
        - res["statuses"].get("200", 0)
        + sum(res["errors"].get(k, 0) for k in ("timeout", "read", "connect"))
    )
    # Every beat answered (200, none timed out), none sent late because the platform held the connections.
    kept_up = unanswered == 0 and res["requests"] >= 0.98 * scheduled and res["schedule_lag"]["late_100ms"] == 0
    loadgen_cpu_pct = round(res["loadgen_cpu_s"] / res["duration_s"] * 100, 1)
    details = {
        "machines": len(ids),
        "providers": n_providers,
        "window_s": duration,
        "target_rate": rate,
        "registration": {
            k: round(v, 2) if isinstance(v, float) else v for k, v in reg.items() if k not in ("ids", "keys")
        },
        "unanswered": unanswered,
        "loadgen": res,
        "platform_processes": load,
    }
    rows.append(
        common.Row(
            figure=NAME,
            metric=f"heartbeats answered/s of {rate:,.0f}/s offered "
            f"({len(ids):,} machines, every {BEAT_EVERY_S:g} s){on}",
            value=res["ok_per_s"],
            unit="/s",
            target=f"all answered, p99 <= {TARGET_P99_MS:g} ms",
            met=kept_up and p99 is not None and p99 <= TARGET_P99_MS,
            details=details,
        )
    )
    rows.append(
        common.Row(figure=NAME, metric=f"heartbeat p50 latency{on}", value=res["latency"].get("p50_ms"), unit="ms")
    )
    rows.append(
        common.Row(
            figure=NAME,
            metric=f"heartbeat p99 latency (send → answer; sends kept the schedule){on}",
            value=p99,
            unit="ms",
            target=f"<= {TARGET_P99_MS:g} ms",
            met=None if p99 is None else p99 <= TARGET_P99_MS,
            details={"latency": res["latency"], "schedule_lag": res["schedule_lag"]},
        )
    )
    rows.append(
        common.Row(
            figure=NAME,
            metric=f"platform CPU during heartbeats (100 = one core){on}",
            value=load["cpu_percent_mean"],
            unit="%",
            details=load,
        )
    )
    if db_load is not None:
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"PostgreSQL server CPU during heartbeats (100 = one core){on}",
                value=db_load["cpu_percent_mean"],
                unit="%",
                details=db_load,
            )
        )
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"PostgreSQL server RSS during heartbeats (max){on}",
                value=db_load["rss_mib_max"],
                unit="MiB",
            )
        )
    rows.append(
        common.Row(
            figure=NAME,
            metric="load generator CPU during heartbeats (wrk, 100 = one core)",
            value=loadgen_cpu_pct,
            unit="%",
        )
    )
    if load["cpu_percent_mean"] and res["ok_per_s"]:
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"platform CPU per heartbeat{on}",
                unit="ms",
                value=round(load["cpu_percent_mean"] / 100 * 1000 / res["ok_per_s"], 3),
            )
        )
    rows.append(
        common.Row(
            figure=NAME, metric=f"platform RSS during heartbeats (max){on}", value=load["rss_mib_max"], unit="MiB"
        )
    )
    try:
        api = api_placement(session, reps=1 if ctx.quick else 3)
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"POST /v1/clusters (8 GPUs) on the platform, {len(ids):,} machines{on}",
                value=common.median(api["ms"]),
                unit="ms",
                details=api,
            )
        )
    except Exception as exc:
        rows.append(common.error_row(NAME, exc))
    return rows
