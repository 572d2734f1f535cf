"""Figure 4: API throughput, latency and CPU per request of `GET /v1/clusters/{id}` and the agent heartbeat at
32 concurrent keep-alive connections, against the same FastAPI app under plain uvicorn (benchmarks.baseline_app).

Windows alternate baseline and platform per repetition. The load generator is wrk (benchmarks.wrk),
whose own CPU is reported beside the servers'. CPU per request: the CPU time of all of a server's
processes in the window divided by the requests it answered (it does not depend on the generator).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import httpx

from benchmarks import common, platform_session, wrk
from worker import procs

NAME = "api_throughput"
CONNECTIONS = 32
WARMUP_S = 1.0
TARGET_RATIO = 0.5
TARGET_P99_MS = 25.0
TARGET_CPU_MS = 1.0
HEARTBEAT_BODY = {
    "usage": {"cpu_percent": 12.5, "memory_used_mb": 2048, "gpu_utilization": [], "active_leases": 0},
    "leases": [],
}


def cpu_ms_per_request(result: dict) -> float | None:
    """The server's CPU time per answered request in one window (its processes only)."""
    cpu = result["server"]["cpu_percent_mean"]
    if cpu is None or not result["ok_per_s"]:
        return None
    return round(cpu / 100 * 1000 / result["ok_per_s"], 3)


def register_machine(
    api, key: str, *, gpus: int = 0, gpu_model: str = "NVIDIA H100 80GB HBM3", cpus: int = 32, price: float = 2.0
) -> dict:
    spec = {
        "hostname": key,
        "os": "Linux",
        "arch": "x86_64",
        "cpus": cpus,
        "memory_mb": 256_000,
        "gpus": [{"index": i, "model": gpu_model, "memory_mb": 81_559} for i in range(gpus)],
        "gpus_declared": True,
    }
    return api.ok(
        "POST",
        "/v1/machines",
        json={
            "machine_key": key,
            "name": key[:64],
            "spec": spec,
            "price_per_gpu_hour": price,
            "price_per_cpu_hour": 0.05,
        },
    )


def a_cluster(session: platform_session.PlatformSession) -> str:
    """A cluster with nodes to read: figure 1's last one, else a 2-worker cluster made and deleted here."""
    if session.cycles:
        return session.cycles[-1]["cluster_id"]
    cluster = session.create(num_workers=2, duration_s=600)
    session.buyer.ok("DELETE", f"/v1/clusters/{cluster['id']}")
    session.wait_ended(cluster["id"])
    return cluster["id"]


class BaselineServer:
    """benchmarks.baseline_app in its own process on a free port, stopped by its owner tag."""

    def __init__(self, workdir: Path, jwt_secret: Path, cluster: dict, heartbeat_s: float):
        self.tag = "dclb-uvicorn-" + secrets.token_hex(4)
        self.port = procs.free_port()
        self.workdir = workdir
        self.cluster_json = workdir / "cluster.json"
        self.cluster_json.write_text(json.dumps(cluster))
        self.cmd = [
            sys.executable,
            "-m",
            "benchmarks.baseline_app",
            "--port",
            str(self.port),
            "--jwt-secret-file",
            str(jwt_secret),
            "--cluster-json",
            str(self.cluster_json),
            "--heartbeat-interval-s",
            str(heartbeat_s),
        ]

    def __enter__(self) -> BaselineServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PYTHONPATH"] = str(common.REPO_ROOT)
        procs.spawn(self.cmd, env=env, cwd=common.REPO_ROOT, log_path=self.workdir / "uvicorn.log", owner_tag=self.tag)
        common.wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{self.port}/docs", timeout=2).status_code == 200,
            timeout_s=60,
            interval_s=0.2,
            what="the baseline uvicorn app",
        )
        return self

    def __exit__(self, *exc_info) -> None:
        procs.stop_owned(self.tag, grace_s=3.0)

    def processes(self):
        return procs.owned_processes(self.tag)


def run(ctx) -> list[common.Row]:
    wrk.binary()  # no wrk: this figure is an error row saying how to install it
    session = ctx.platform()
    duration = 3.0 if ctx.quick else 5.0
    cid = a_cluster(session)
    cluster = session.get_cluster(cid)
    provider = session.new_account("provider", "bench-hb-" + secrets.token_hex(3))
    machine = register_machine(provider, "bench-hb-" + secrets.token_hex(8))
    platform_port = int(session.url.rsplit(":", 1)[1])
    endpoints = {
        "GET /v1/clusters/{id}": {
            "method": "GET",
            "path": f"/v1/clusters/{cid}",
            "headers": {"Authorization": f"Bearer {session.buyer.token}"},
        },
        "POST /v1/machines/{id}/heartbeat": {
            "method": "POST",
            "path": f"/v1/machines/{machine['id']}/heartbeat",
            "headers": {"Authorization": f"Bearer {machine['agent_key']}"},
            "body": json.dumps(HEARTBEAT_BODY),
        },
    }
    results: dict[str, dict[str, list[dict]]] = {e: {"baseline": [], "platform": []} for e in endpoints}
    with BaselineServer(ctx.workdir, session.jwt_secret_path(), cluster, session.heartbeat_s) as baseline:
        ports = {"baseline": baseline.port, "platform": platform_port}
        finders = {"baseline": baseline.processes, "platform": session.platform_processes}
        for rep in range(ctx.reps):
            for endpoint, req in endpoints.items():
                for target in ("baseline", "platform"):
                    spec = {
                        "mode": "closed",
                        "port": ports[target],
                        "connections": CONNECTIONS,
                        "duration_s": duration,
                        "requests": [req],
                    }
                    wrk.run({**spec, "duration_s": WARMUP_S}, ctx.workdir)  # connections open, caches warm
                    with common.ResourceSampler(finders[target], refresh_s=60) as sampler:
                        res = wrk.run(spec, ctx.workdir)
                    res["server"] = sampler.report()
                    results[endpoint][target].append(res)
                    common.log(
                        f"{NAME}: rep {rep + 1} {endpoint} {target}: {res['ok_per_s']:.0f} req/s, "
                        f"p99 {res['latency'].get('p99_ms')} ms, statuses {res['statuses']}"
                    )
    rows = []
    for endpoint, by in results.items():
        rate = {t: common.median([r["ok_per_s"] for r in by[t]]) for t in by}
        p99 = {t: common.median([r["latency"]["p99_ms"] for r in by[t] if r["latency"]["n"]]) for t in by}
        p50 = {t: common.median([r["latency"]["p50_ms"] for r in by[t] if r["latency"]["n"]]) for t in by}
        r = common.ratio(rate["platform"], rate["baseline"])
        bad = {t: [r_["statuses"] for r_ in by[t] if set(r_["statuses"]) - {"200"} or r_["errors"]] for t in by}
        details = {
            "connections": CONNECTIONS,
            "window_s": duration,
            "reps": ctx.reps,
            "platform_req_s": [x["ok_per_s"] for x in by["platform"]],
            "baseline_req_s": [x["ok_per_s"] for x in by["baseline"]],
            "platform_p50_ms": p50["platform"],
            "baseline_p50_ms": p50["baseline"],
            "baseline_p99_ms": p99["baseline"],
            "non_200_or_errors": bad,
            "loadgen": "wrk -t1",
            "loadgen_cpu_s_per_window": {t: [x["loadgen_cpu_s"] for x in by[t]] for t in by},
            "server_cpu_percent_mean": {t: [x["server"]["cpu_percent_mean"] for x in by[t]] for t in by},
            "platform_cpu_s_by_process (last window)": by["platform"][-1]["server"]["cpu_s_by_process"],
        }
        cpu = {t: common.median([cpu_ms_per_request(x) for x in by[t]]) for t in by}
        loadgen_cpu = {t: common.median([x["loadgen_cpu_s"] * 1000 / max(1, x["requests"]) for x in by[t]]) for t in by}
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"{endpoint} throughput, {CONNECTIONS} conns",
                value=rate["platform"],
                unit="req/s",
                baseline=rate["baseline"],
                ratio=r,
                target=f">= {TARGET_RATIO}x uvicorn",
                met=None if r is None else r >= TARGET_RATIO,
                details=details,
            )
        )
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"{endpoint} server CPU per request (all its processes)",
                value=cpu["platform"],
                unit="ms",
                baseline=cpu["baseline"],
                ratio=common.ratio(cpu["platform"], cpu["baseline"]),
                target=f"<= {TARGET_CPU_MS:g} ms",
                met=None if cpu["platform"] is None else cpu["platform"] <= TARGET_CPU_MS,
                details={"load_generator_cpu_ms_per_request (wrk)": loadgen_cpu},
            )
        )
        rows.append(
            common.Row(
                figure=NAME,
                metric=f"{endpoint} p99 latency",
                value=p99["platform"],
                unit="ms",
                baseline=p99["baseline"],
                ratio=common.ratio(p99["platform"], p99["baseline"]),
                target=f"<= {TARGET_P99_MS:g} ms",
                met=None if p99["platform"] is None else p99["platform"] <= TARGET_P99_MS,
            )
        )
    return rows
