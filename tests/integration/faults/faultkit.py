"""Fault injection for the fault suite, and the invariants checked after every fault.

Faults: kill -9 of a control-plane actor (by the PID of its worker process, found among the
platform's own processes), heartbeat load from simulated machines, CPU burners, an exclusive
lock held on the platform's SQLite database. Invariants: no cluster lost, no machine leased
twice, no orphan process, expiry on time, metering that adds up.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.helpers import Api, wait_for
from worker import procs

ACTORS = ("ProviderRegistry", "ClusterManager", "ExpiryReaper")
LEASE_TAG_PREFIX = "dcl-lease-"
TERMINAL = {"terminated", "failed", "expired"}
ACTIVE_LEASE = {"reserved", "open"}
EXPIRY_TOLERANCE_S = 5.0  # the reaper is ms-exact; this leaves room for a busy 2-core machine
ORPHAN_GRACE_S = 30.0  # Ray's `ray::` workers can outlive their raylet for seconds


# --- control-plane actors ----------------------------------------------------------------


def actor_pids(platform, actor: str) -> list[int]:
    """PIDs of the actor's worker process, only among the processes this platform owns."""
    title = f"ray::{actor}Actor"
    pids = []
    for p in platform.owned_processes():
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if cmd and cmd[0].startswith(title):
            pids.append(p.pid)
    return pids


def kill_actor(platform, actor: str, *, restart_timeout_s: float = 120) -> dict:
    """kill -9 of the actor's process; waits until Ray has restarted it (a new PID) and the API answers."""
    (pid,) = wait_for(lambda: actor_pids(platform, actor), timeout_s=30, what=f"{actor} process")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    new = wait_for(
        lambda: [p for p in actor_pids(platform, actor) if p != pid],
        timeout_s=restart_timeout_s,
        interval_s=0.5,
        what=f"{actor} restarted by Ray",
    )
    wait_for(
        lambda: httpx.get(platform.url + "/healthz", timeout=10).status_code == 200,
        timeout_s=restart_timeout_s,
        interval_s=0.5,
        what="/healthz 200 after the kill",
    )
    return {
        "actor": actor,
        "pid": pid,
        "new_pid": new[0],
        "killed_at": killed_at,
        "back_after_s": round(time.time() - killed_at, 1),
    }


# --- heartbeat load ------------------------------------------------------------------------


def simulated_spec(name: str) -> dict:
    # One CPU and one GPU: too small for the suite's workers (2 CPUs), and a head goes where it
    # wastes no GPU, so placement never picks these machines while the real ones have room.
    return {
        "hostname": name,
        "cpus": 1,
        "memory_mb": 1024,
        "gpus": [{"index": 0, "model": "Simulated GPU", "memory_mb": 1024}],
        "gpus_declared": True,
    }


class HeartbeatLoad:
    """A thread heartbeating simulated machines, each every interval_s (agents' pace); counts every status."""

    def __init__(self, url: str, machines: int = 10, interval_s: float = 2.0):
        self.pause_s = interval_s / machines
        self.provider = Api.sign_up(url, "provider")
        self.machine_ids = []
        for i in range(machines):
            name = f"sim-{uuid.uuid4().hex[:6]}-{i}"
            r = self.provider.post(
                "/v1/machines",
                json={
                    "machine_key": "mk-" + uuid.uuid4().hex,
                    "name": name,
                    "spec": simulated_spec(name),
                    "price_per_cpu_hour": 10_000,
                },
            )
            assert r.status_code == 201, r.text
            self.machine_ids.append(r.json()["id"])
        self.statuses: collections.Counter = collections.Counter()
        self.last_ok_at = 0.0
        self.answers: list[tuple[float, int | str]] = []  # (answered at, status or the client's error)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-load", daemon=True)

    def _run(self) -> None:
        http = httpx.Client(base_url=self.provider.base_url, timeout=30, headers=dict(self.provider.http.headers))
        i = 0
        while not self._stop.is_set():
            mid = self.machine_ids[i % len(self.machine_ids)]
            i += 1
            try:
                r = http.post(f"/v1/machines/{mid}/heartbeat", json={"usage": {"cpu_percent": 1.0}})
                self.answers.append((time.time(), r.status_code))
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.last_ok_at = time.time()
                elif r.status_code >= 500 and r.status_code != 503:
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:  # the proxy itself restarting: the agent retries too
                self.answers.append((time.time(), type(exc).__name__))
                self.statuses[type(exc).__name__] += 1
            self._stop.wait(self.pause_s)
        http.close()

    def __enter__(self) -> HeartbeatLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def answered_since(self, t: float) -> bool:
        return self.last_ok_at > t

    def between(self, start: float, end: float) -> collections.Counter:
        """The statuses of the heartbeats answered (or failed) between start and end."""
        return collections.Counter(status for at, status in list(self.answers) if start <= at <= end)

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from t to the first heartbeat answered 200 after it; None while there is none."""
        return next((at - t for at, status in list(self.answers) if at > t and status == 200), None)


# --- CPU burners ----------------------------------------------------------------------------


@contextlib.contextmanager
def cpu_burners(n: int = 2):
    """n busy-looping subprocesses, started here and stopped by their PID."""
    burners = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        yield [b.pid for b in burners]
    finally:
        for b in burners:
            b.kill()
            b.wait(timeout=10)


# --- a locked database ---------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_db_lock(db_path: Path):
    """Holds SQLite's write lock on the platform database: every writer waits, then gets SQLITE_BUSY."""
    conn = sqlite3.connect(db_path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# --- invariants ----------------------------------------------------------------------------


def db_rows(state_dir: Path, sql: str, args=()) -> list[dict]:
    """Reads the platform database directly (a short read transaction; never writes)."""
    conn = sqlite3.connect(f"file:{state_dir / 'platform.db'}?mode=ro", uri=True, timeout=60)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def lease_process_tags() -> dict[str, list[int]]:
    """Every live process carrying a lease's owner tag, by tag (one scan of the process table)."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    for p in psutil.process_iter():
        try:
            tag = p.environ().get(procs.OWNER_ENV, "")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        if tag.startswith(LEASE_TAG_PREFIX) and procs.is_live(p):
            found[tag].append(p.pid)
    return found


def check_no_machine_leased_twice(state_dir: Path) -> None:
    machines = {m["id"]: m for m in db_rows(state_dir, "SELECT id, cpus, gpus FROM machines")}
    live = db_rows(state_dir, "SELECT id, machine_id, cpus, gpus FROM leases WHERE status IN ('reserved', 'open')")
    cpus: dict[str, int] = collections.Counter()
    gpus: dict[str, list[int]] = collections.defaultdict(list)
    for lease in live:
        cpus[lease["machine_id"]] += lease["cpus"]
        gpus[lease["machine_id"]] += json.loads(lease["gpus"])
    for mid, used in cpus.items():
        assert used <= machines[mid]["cpus"], f"machine {mid} leased {used} CPUs of {machines[mid]['cpus']}"
    for mid, idx in gpus.items():
        assert len(idx) == len(set(idx)), f"machine {mid}: a GPU is in two live leases: {idx}"


def check_clusters(admin: Api, state_dir: Path, cluster_ids: list[str]) -> dict[str, dict]:
    """Every cluster still there, each in a consistent state; returns them by id."""
    listed = {c["id"]: c for c in admin.get("/v1/clusters").json()}
    missing = [cid for cid in cluster_ids if cid not in listed]
    assert not missing, f"clusters lost: {missing}"
    for cid in cluster_ids:
        c = listed[cid]
        leases = db_rows(state_dir, "SELECT * FROM leases WHERE cluster_id = ?", (cid,))
        live = [l for l in leases if l["status"] in ACTIVE_LEASE]
        if c["status"] in TERMINAL:
            assert c["ended_at"], f"{cid} is {c['status']} without ended_at"
            assert not live, f"{cid} is {c['status']} but holds leases {[l['id'] for l in live]}"
            assert all(l["left_at"] for l in leases if l["joined_at"]), f"{cid}: a joined node never left"
        if c["status"] == "running":
            assert any(l["role"] == "head" and l["status"] == "open" and l["joined_at"] for l in leases), (
                f"{cid} is running without a joined head"
            )
        assert c["status"] != "failed" or c["reason"], f"{cid} failed without a reason"
        for l in leases:
            assert not (l["left_at"] and l["joined_at"]) or l["left_at"] >= l["joined_at"], l
    return {cid: listed[cid] for cid in cluster_ids}


def check_no_orphans(state_dir: Path, cluster_ids: list[str] | None = None) -> None:
    """No process carries the owner tag of a lease that is no longer live."""
    sql = "SELECT id FROM leases WHERE status NOT IN ('reserved', 'open')"
    ended = {LEASE_TAG_PREFIX + r["id"] for r in db_rows(state_dir, sql)}
    orphans = {}

    def none_left():
        nonlocal orphans
        orphans = {tag: pids for tag, pids in lease_process_tags().items() if tag in ended}
        return not orphans

    try:
        wait_for(none_left, timeout_s=ORPHAN_GRACE_S, interval_s=1.0, what="lease processes gone")
    except AssertionError:
        raise AssertionError(f"orphan processes of closed leases: {orphans}") from None


def check_running_nodes_alive(state_dir: Path, clusters: dict[str, dict]) -> None:
    """A running cluster's open, joined nodes still have their processes: "running" is not a ghost."""
    alive = lease_process_tags()
    for cid, c in clusters.items():
        if c["status"] != "running":
            continue
        sql = "SELECT id, role FROM leases WHERE cluster_id = ? AND status = 'open' AND joined_at IS NOT NULL"
        dead = [l for l in db_rows(state_dir, sql, (cid,)) if not alive.get(LEASE_TAG_PREFIX + l["id"])]
        assert not dead, f"{cid} is running but the processes of its nodes {dead} are gone"


def check_usage(buyer: Api, clusters: dict[str, dict]) -> None:
    """GET /v1/usage per ended cluster equals the sum of its nodes' join → leave times."""
    ended = {cid: c for cid, c in clusters.items() if c["status"] in TERMINAL}
    if not ended:
        return
    start = min(c["created_at"] for c in ended.values()) - 10
    usage = {i["cluster_id"]: i for i in buyer.get("/v1/usage", params={"start": start}).json()["items"]}
    for cid, c in ended.items():
        nodes = [n for n in c["nodes"] if n["joined_at"]]
        expected = sum(n["left_at"] - n["joined_at"] for n in nodes)
        got = usage.get(cid, {"node_seconds": 0.0})["node_seconds"]
        assert got == pytest.approx(expected, abs=0.01), f"{cid}: usage {got} s, nodes {expected} s"
        cpu = sum((n["left_at"] - n["joined_at"]) * n["cpus"] for n in nodes)
        assert usage.get(cid, {"cpu_seconds": 0.0})["cpu_seconds"] == pytest.approx(cpu, abs=0.01)


def expiry_lateness(buyer: Api, cid: str) -> float:
    """Seconds from the cluster's deadline to the start of its teardown (it must have expired)."""
    c = buyer.get(f"/v1/clusters/{cid}").json()
    assert c["status"] == "expired", f"{cid} is {c['status']}, not expired: {c['reason']}"
    starts = [e for e in buyer.get(f"/v1/clusters/{cid}/events").json() if e["kind"] == "terminating"]
    assert len(starts) == 1, starts
    return starts[0]["ts"] - c["expires_at"]


def check_all(platform, buyer: Api, cluster_ids: list[str]) -> dict[str, dict]:
    """The invariants after a fault: no cluster lost, no machine leased twice, no orphan, usage adds up."""
    admin = platform.admin()
    clusters = check_clusters(admin, platform.state_dir, cluster_ids)
    check_no_machine_leased_twice(platform.state_dir)
    check_no_orphans(platform.state_dir)
    check_running_nodes_alive(platform.state_dir, clusters)
    check_usage(buyer, clusters)
    return clusters
