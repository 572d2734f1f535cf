"""One buyer cluster's cycle on a running platform (PlatformSession): created, usable (a job accepted), deleted,
released (every node leasable again and every lease process gone), with the time of each step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import common
from worker import procs

RAY = str(Path(sys.executable).parent / "ray")
LEASE_TAG_PREFIX = "dcl-lease-"
POLL_S = 0.2
ENDED = ("terminated", "expired", "failed")


def run(session, *, num_workers: int = 2, footprint: bool = False, timeout_s: float = 240) -> dict:
    """POST → head and every worker joined → a job accepted → DELETE → every process gone and every
    node released. Times are seconds from the POST (usable) and from the DELETE (release)."""
    out: dict[str, Any] = {"num_workers": num_workers}
    wall0, t0 = time.time(), time.monotonic()
    cluster = session.create(num_workers, 1800)
    cid = out["cluster_id"] = cluster["id"]
    out["post_s"] = time.monotonic() - t0
    conn = None
    try:

        def progressed():
            nonlocal conn
            c = session.get_cluster(cid)
            if c["status"] in ENDED or c["status"] == "terminating":
                raise RuntimeError(f"cluster {cid} is {c['status']}: {c['reason']}")
            if conn is None and c["head_node_ip"]:
                r = session.buyer.get(f"/v1/clusters/{cid}/connection")
                if r.status_code == 200:
                    conn = r.json()
                    out.setdefault("head_connection_s", time.monotonic() - t0)
            return conn is not None and c["workers_joined"] >= num_workers and c

        cluster = common.wait_for(progressed, timeout_s=timeout_s, interval_s=POLL_S, what=f"{cid} joined")
        out["joined_seen_s"] = time.monotonic() - t0
        joined = [n["joined_at"] for n in cluster["nodes"] if n["joined_at"]]
        out["joined_at_s"] = max(joined) - wall0  # server-side time of the last node's `ray start`
        job = submit_job(conn["env"], session.root)
        out["job_accepted_s"] = time.monotonic() - t0
        out["job_submit_s"] = job["elapsed_s"]
        if not job["ok"]:
            raise RuntimeError(f"ray job submit failed: {job['output'][-300:]}")
        out["usable_s"] = out["job_accepted_s"]
        session.lease_ids.update(n["id"] for n in cluster["nodes"])
        if footprint:
            time.sleep(3.0)  # the job's driver has come and gone; the nodes idle
            out["nodes_memory"] = nodes_memory(cluster)
            out["platform_with_cluster"] = common.memory_of(session.platform_processes())
        out.update(release(session, cluster))
    except BaseException:
        session.buyer.delete(f"/v1/clusters/{cid}")
        raise
    finally:
        try:
            events = session.events(cid)
            out["events"] = [f"{e['ts'] - wall0:7.2f} {e['kind']}: {e['message'][:120]}" for e in events]
            out["phases_s"] = phases(events, wall0)
        except Exception as exc:  # the timeline is a detail; never hide the real outcome
            out["events"] = [f"(events unavailable: {exc!r})"]
    session.cycles.append(out)
    return out


def nodes_memory(cluster: dict) -> list[dict]:
    return [
        {"role": n["role"], "lease": n["id"], **common.memory_of(procs.owned_processes(LEASE_TAG_PREFIX + n["id"]))}
        for n in cluster["nodes"]
        if n["status"] == "open"
    ]


def release(session, cluster: dict, timeout_s: float = 120) -> dict:
    """DELETE, then wait for every node to be released (leasable) and every lease process to be gone."""
    cid = cluster["id"]
    lease_ids = [n["id"] for n in cluster["nodes"]]
    tags = [LEASE_TAG_PREFIX + lid for lid in lease_ids]

    def scan() -> list[psutil.Process]:
        return [p for tag in tags for p in procs.owned_processes(tag)]

    watched = scan()
    out: dict[str, Any] = {"processes_before_delete": len(watched)}
    t0 = time.monotonic()
    session.buyer.ok("DELETE", f"/v1/clusters/{cid}")
    out["delete_call_s"] = time.monotonic() - t0
    deadline = t0 + timeout_s
    t_gone = t_nodes = None
    last_api = 0.0
    while time.monotonic() < deadline and (t_gone is None or t_nodes is None):
        now = time.monotonic()
        if t_gone is None:
            watched = [p for p in watched if procs.is_live(p)]
            if not watched:
                watched = scan()  # anything started since the first look (a late Ray worker)
                if not watched:
                    t_gone = now - t0
        if t_nodes is None and now - last_api >= POLL_S:
            last_api = now
            c = session.get_cluster(cid)
            if all(n["status"] in ("closed", "lost") for n in c["nodes"]):
                t_nodes = now - t0
        time.sleep(0.05)
    if t_gone is None or t_nodes is None:
        raise common.Timeout(
            f"cluster {cid} not released {timeout_s:.0f} s after DELETE "
            f"(processes gone: {t_gone}, nodes released: {t_nodes})"
        )
    out["processes_gone_s"] = t_gone
    out["nodes_released_s"] = t_nodes
    out["release_s"] = max(t_gone, t_nodes)
    ended = session.wait_ended(cid)
    out["final_status"] = ended["status"]
    out["terminated_s"] = time.monotonic() - t0
    return out


def phases(events: list[dict], wall0: float) -> dict[str, float]:
    """Seconds from the POST to each step of a launch, from the cluster's own event times."""

    def at(kind: str, last: bool = False) -> float | None:
        times = [e["ts"] - wall0 for e in events if e["kind"] == kind]
        return round((times[-1] if last else times[0]), 2) if times else None

    return {
        "head node opened": at("node_opened"),
        "head joined": at("head_joined"),
        "workers opened": at("node_opened", last=True),
        "workers joined": at("worker_joined", last=True),
    }


def submit_job(conn_env: dict, home: Path, timeout_s: float = 120) -> dict:
    """`ray job submit --no-wait` (returns once the cluster accepted the job), as a buyer runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)  # never a ~/.ray/auth_token of this machine's user
    env.update(conn_env)
    t0 = time.monotonic()
    r = subprocess.run(
        [RAY, "job", "submit", "--no-wait", "--", "python", "-c", "print(1)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return {"ok": r.returncode == 0, "elapsed_s": time.monotonic() - t0, "output": r.stdout + r.stderr}
