"""Lifetimes and failures on the real platform: exact expiry (even across a reaper kill -9), extend,
usage from join to leave, and a lost worker machine replaced on another one."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.integration.helpers import Api, wait_for
from worker import procs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market3(platform):
    """Three provider machines (4 logical CPUs each): room for a replacement."""
    machines = []
    for _ in range(3):
        provider = Api.sign_up(platform.url, "provider")
        agent = platform.start_agent(provider, extra_args=("--cpus", "4"))
        machine = wait_for(
            lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
            timeout_s=60,
            what="machine online",
        )[0]
        machines.append({"agent": agent, "provider": provider, "id": machine["id"]})
    yield machines
    for m in machines:
        m["agent"].stop(grace_s=5)


def events(buyer: Api, cid: str) -> list[dict]:
    return buyer.get(f"/v1/clusters/{cid}/events").json()


def status_is(buyer: Api, cid: str, *wanted: str, timeout_s: float = 240) -> dict:
    def check():
        c = buyer.get(f"/v1/clusters/{cid}").json()
        return c if c["status"] in wanted else None

    try:
        return wait_for(check, timeout_s=timeout_s, interval_s=0.25, what=f"{cid} {wanted}")
    except AssertionError as exc:
        text = "\n".join(f"{e['kind']}: {e['message']}" for e in events(buyer, cid))
        raise AssertionError(f"{exc}\n{text}") from None


def own_pids(platform, actor: str) -> list[int]:
    return [p.pid for p in platform.owned_processes() if p.cmdline() and p.cmdline()[0].startswith(f"ray::{actor}")]


def test_expiry_is_on_time_and_once_across_a_reaper_kill_and_usage_matches(market3, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    cid = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 60}).json()["id"]
    cluster = status_is(buyer, cid, "running")
    deadline = cluster["expires_at"]
    # Shortly before the deadline, with time for Ray to restart the actor (a few seconds on 2 cores).
    wait_for(lambda: time.time() > deadline - 15, timeout_s=70, interval_s=0.5, what="15 s before the deadline")
    (pid,) = own_pids(platform, "ExpiryReaperActor")
    os.kill(pid, signal.SIGKILL)
    ended = status_is(buyer, cid, "expired", timeout_s=90)
    starts = [e for e in events(buyer, cid) if e["kind"] == "terminating"]
    assert len(starts) == 1, starts  # torn down exactly once
    lateness = starts[0]["ts"] - deadline
    assert 0 <= lateness <= 1.0, f"teardown began {lateness:.3f} s after the deadline"
    assert "lifetime ended" in starts[0]["message"]

    # Usage counts each node from joining Ray to leaving it.
    nodes = [n for n in ended["nodes"] if n["joined_at"]]
    assert len(nodes) == 2 and all(n["left_at"] for n in nodes)
    expected = sum(n["left_at"] - n["joined_at"] for n in nodes)
    usage = buyer.get("/v1/usage", params={"start": ended["created_at"] - 10}).json()
    (item,) = [i for i in usage["items"] if i["cluster_id"] == cid]
    assert item["node_seconds"] == pytest.approx(expected, abs=0.01)
    assert item["cpu_seconds"] == pytest.approx(
        sum((n["left_at"] - n["joined_at"]) * n["cpus"] for n in nodes), abs=0.01
    )
    assert 40 < expected < 2 * 70  # head and worker each lived most of the minute
    provider_usage = market3[0]["provider"].get("/v1/usage", params={"start": ended["created_at"] - 10}).json()
    assert provider_usage["role"] == "provider" and "earnings" in provider_usage["total"]


def test_extend_moves_the_deadline_within_the_maximum(market3, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    c = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 600}).json()
    r = buyer.post(f"/v1/clusters/{c['id']}/extend", json={"duration_s": 600})
    assert r.status_code == 200 and r.json()["expires_at"] == pytest.approx(c["expires_at"] + 600)
    r = buyer.post(f"/v1/clusters/{c['id']}/extend", json={"duration_s": 8 * 86_400})
    assert r.status_code == 409 and "at most" in r.json()["detail"]
    assert buyer.post(f"/v1/clusters/{c['id']}/extend", json={"duration_s": 0}).status_code == 422
    other = Api.sign_up(platform.url, "buyer")
    assert other.post(f"/v1/clusters/{c['id']}/extend", json={"duration_s": 60}).status_code == 404
    buyer.delete(f"/v1/clusters/{c['id']}")
    status_is(buyer, c["id"], "terminated", timeout_s=120)
    assert buyer.post(f"/v1/clusters/{c['id']}/extend", json={"duration_s": 60}).status_code == 409


def test_lost_worker_machine_is_replaced(market3, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    cid = buyer.post("/v1/clusters", json={"num_workers": 2, "duration_s": 1800}).json()["id"]
    cluster = status_is(buyer, cid, "running")
    head_machine = next(n["machine_id"] for n in cluster["nodes"] if n["role"] == "head")
    victim_node = next(n for n in cluster["nodes"] if n["role"] == "worker" and n["machine_id"] != head_machine)
    victim = next(m for m in market3 if m["id"] == victim_node["machine_id"])
    # The machine dies: its agent and the Ray node it ran, at once.
    lost_at = time.time()
    victim["agent"].kill9()
    for p in procs.owned_processes("dcl-lease-" + victim_node["id"]):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass  # a sandboxed lease may already be ending with its agent
    try:
        back = wait_for(
            lambda: (
                (c := buyer.get(f"/v1/clusters/{cid}").json())["status"] == "running"
                and c["workers_joined"] == 2
                and victim_node["id"] not in [n["id"] for n in c["nodes"] if n["status"] == "open"]
                and c
            ),
            timeout_s=120,
            interval_s=0.5,
            what="back to 2 workers",
        )
    except AssertionError as exc:
        text = "\n".join(f"{e['kind']}: {e['message']}" for e in events(buyer, cid))
        raise AssertionError(f"{exc}\n{text}") from None
    replaced_in = time.time() - lost_at
    kinds = [e["kind"] for e in events(buyer, cid)]
    assert "lease_lost" in kinds and "degraded" in kinds
    workers = [n for n in back["nodes"] if n["role"] == "worker" and n["status"] == "open"]
    assert all(n["machine_id"] != victim["id"] for n in workers)
    print(f"worker replaced {replaced_in:.1f} s after its machine died")
    victim["agent"].start()  # the module's other tests expect three machines
    buyer.delete(f"/v1/clusters/{cid}")
    status_is(buyer, cid, "terminated", timeout_s=120)
