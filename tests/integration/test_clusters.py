"""Buyer clusters end to end: real sub-clusters on local agents' leases, real `ray job submit`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcl_core import domain
from tests import lease_versions
from tests.integration.helpers import Api, wait_for
from worker import procs

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RAY = str(Path(sys.executable).parent / "ray")


def events_text(buyer: Api, cid: str) -> str:
    return "\n".join(f"{e['kind']}: {e['message']}" for e in buyer.get(f"/v1/clusters/{cid}/events").json())


def wait_status(buyer: Api, cid: str, wanted: str, timeout_s: float = 240) -> dict:
    def check():
        c = buyer.get(f"/v1/clusters/{cid}").json()
        if c["status"] in ("failed", "terminated", "expired") and c["status"] != wanted:
            raise AssertionError(f"cluster ended {c['status']}: {c['reason']}\n{events_text(buyer, cid)}")
        return c if c["status"] == wanted else None

    try:
        return wait_for(check, timeout_s=timeout_s, interval_s=0.5, what=f"cluster {cid} {wanted}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nevents:\n{events_text(buyer, cid)}") from None


def lease_processes(cid_leases: list[str]) -> list:
    return [p for lid in cid_leases for p in procs.owned_processes("dcl-lease-" + lid)]


def submit(env_extra: dict, address: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # never a ~/.ray/auth_token of the machine's user
    env.update(env_extra)
    return subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(EXAMPLES), "--", "python", "train.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cluster_runs_jobs_with_its_token_only(market, platform, tmp_path):
    buyer = Api.sign_up(platform.url, "buyer")
    r = buyer.post("/v1/clusters", json={"num_workers": 2, "duration_s": 1800, "name": "e2e"})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    assert r.json()["status"] in ("pending", "provisioning")
    cluster = wait_status(buyer, cid, "running")
    assert cluster["workers_joined"] == 2
    # The real agents report what their leases run: the cluster runs the platform's Ray on their Python.
    here = domain.python_minor(lease_versions.PYTHON)
    assert (cluster["ray_version"], cluster["python_version"]) == (lease_versions.RAY, here)
    workers = [n for n in cluster["nodes"] if n["role"] == "worker"]
    assert sorted(n["machine_id"] for n in workers) == sorted(market)  # spread over both machines

    conn = buyer.get(f"/v1/clusters/{cid}/connection").json()
    assert conn["env"]["RAY_AUTH_MODE"] == "token" and conn["ray_auth_token"] == conn["env"]["RAY_AUTH_TOKEN"]
    assert "ray job submit" in conn["ray_job_submit"]

    ok = submit(conn["env"], conn["dashboard_url"], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    machines_line = next(line for line in ok.stdout.splitlines() if line.startswith("MACHINES "))
    assert sorted(machines_line.split()[1:]) == sorted(market)  # the labels prove who ran what

    no_token = submit({}, conn["dashboard_url"], tmp_path)
    assert no_token.returncode != 0
    assert (
        "unauthorized" in (no_token.stdout + no_token.stderr).lower()
        or "authentication" in (no_token.stdout + no_token.stderr).lower()
    )

    other = Api.sign_up(platform.url, "buyer")
    assert other.get(f"/v1/clusters/{cid}").status_code == 404
    assert other.get(f"/v1/clusters/{cid}/connection").status_code == 404
    assert other.delete(f"/v1/clusters/{cid}").status_code == 404

    leases = [n["id"] for n in cluster["nodes"]]
    assert lease_processes(leases)
    r = buyer.delete(f"/v1/clusters/{cid}")
    assert r.status_code == 200 and r.json()["status"] in ("terminating", "terminated")
    wait_status(buyer, cid, "terminated", timeout_s=60)
    wait_for(lambda: not lease_processes(leases), timeout_s=30, what="every process of the cluster gone")
    assert buyer.delete(f"/v1/clusters/{cid}").json()["status"] == "terminated"  # idempotent

    # Its logs outlive it: the job's driver output, and each node's Ray and command logs.
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", ok.stdout + ok.stderr).group(0)
    driver = buyer.get(f"/v1/clusters/{cid}/logs/jobs/{job_id}")
    assert driver.status_code == 200 and "MACHINES " in driver.text, driver.text[-2000:]
    files = buyer.get(f"/v1/clusters/{cid}/logs").json()
    assert {f["lease_id"] for f in files} == set(leases), files
    assert any(f["name"] == "ray/raylet.out" for f in files) and any(f["name"].startswith("commands/") for f in files)
    raylet = next(f for f in files if f["name"] == "ray/raylet.out")
    r = buyer.get(f"/v1/clusters/{cid}/logs/file", params={"name": "ray/raylet.out", "node": raylet["lease_id"]})
    assert r.status_code == 200 and r.text
    assert other.get(f"/v1/clusters/{cid}/logs").status_code == 404
    assert buyer.get(f"/v1/clusters/{cid}/logs/jobs/no_such_job").status_code == 404
    assert buyer.get(f"/v1/clusters/{cid}/logs/file", params={"name": "../etc/passwd"}).status_code == 422
    from tests.integration.test_cli import Cli

    (tmp_path / "cli").mkdir()
    cli = Cli(tmp_path / "cli")
    password_file = tmp_path / "buyer-password"
    password_file.write_text(buyer.password + "\n")
    login = cli("login", "--url", platform.url, "--username", buyer.username, "--password-file", str(password_file))
    assert login.returncode == 0, login.stderr
    shown = cli("cluster", "logs", cid, "--job", job_id)
    assert shown.returncode == 0 and "MACHINES " in shown.stdout, shown.stderr
    listed = cli("cluster", "logs", cid)
    assert listed.returncode == 0 and "ray/raylet.out" in listed.stdout


def test_two_buyers_side_by_side_and_capacity_409(market, platform, tmp_path):
    alice, bob = Api.sign_up(platform.url, "buyer"), Api.sign_up(platform.url, "buyer")
    a = alice.post("/v1/clusters", json={"num_workers": 1, "duration_s": 1800}).json()["id"]
    b = bob.post("/v1/clusters", json={"num_workers": 1, "duration_s": 1800}).json()["id"]
    # 8 CPUs in all, 4 taken: asking for 4 more workers plus a head cannot fit.
    r = bob.post("/v1/clusters", json={"num_workers": 4, "duration_s": 600})
    assert r.status_code == 409, r.text
    assert "not enough capacity" in r.json()["detail"]
    assert len(bob.get("/v1/clusters").json()) == 1  # nothing left behind

    wait_status(alice, a, "running")
    cb = wait_status(bob, b, "running")
    alice.delete(f"/v1/clusters/{a}")
    wait_status(alice, a, "terminated", timeout_s=60)
    assert bob.get(f"/v1/clusters/{b}").json()["status"] == "running"
    conn = bob.get(f"/v1/clusters/{b}/connection").json()
    ok = submit(conn["env"], conn["dashboard_url"], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A's token does not open B's cluster.
    a_token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    assert submit(a_token, conn["dashboard_url"], tmp_path).returncode != 0
    bob.delete(f"/v1/clusters/{b}")
    wait_status(bob, b, "terminated", timeout_s=60)
    wait_for(lambda: not lease_processes([n["id"] for n in cb["nodes"]]), timeout_s=30, what="B's processes gone")


def test_seed_cluster_paths(market, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    assert Api(platform.url).post("/deploy_cluster", json={"num_workers": 1, "duration": 60}).status_code == 401
    r = buyer.post("/deploy_cluster", json={"num_workers": 1, "duration": 60})
    assert r.status_code == 202 and set(r.json()) == {"cluster_id"}
    cid = r.json()["cluster_id"]
    info = buyer.get(f"/cluster/{cid}").json()
    assert set(info) == {"cluster_id", "status", "head_node_ip", "expiration_time", "creation_time", "num_workers"}
    assert info["expiration_time"] - info["creation_time"] == pytest.approx(3600, abs=1)
    r = buyer.delete(f"/cluster/{cid}")
    assert r.status_code == 200 and r.json() == {"message": "Cluster terminated successfully"}
    wait_status(buyer, cid, "terminated", timeout_s=90)
    assert buyer.get("/cluster/c-000000000000").status_code == 404


def test_bad_cluster_requests_are_4xx(platform):
    buyer = Api.sign_up(platform.url, "buyer")
    for body in (
        {"num_workers": 0, "duration_s": 600},
        {"num_workers": 65, "duration_s": 600},
        {"num_workers": 1, "duration_s": 59},
        {"num_workers": 1, "duration_s": 604801},
        {"num_workers": 1, "duration_s": 600, "gpus_per_worker": 9},
        {"num_workers": 1, "duration_s": 600, "backend": "gcp"},
        {"num_workers": 1, "duration_s": 600, "surprise": 1},
        {"num_workers": "two", "duration_s": 600},
        {"num_workers": 1, "duration_s": 600, "ray_version": "latest"},
        {"num_workers": 1, "duration_s": 600, "python_version": "3.11.4"},
    ):
        r = buyer.post("/v1/clusters", json=body)
        assert r.status_code == 422, (body, r.text)
    r = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 600, "backend": "aws"})
    assert r.status_code == 400 and "aws" in r.json()["detail"]
    r = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 600, "ray_version": "2.9.3"})
    assert r.status_code == 400 and f"launches clusters of Ray {lease_versions.RAY}" in r.json()["detail"], r.text
    provider = Api.sign_up(platform.url, "provider")
    assert provider.post("/v1/clusters", json={"num_workers": 1, "duration_s": 600}).status_code == 403
    assert buyer.get("/v1/clusters/not-an-id").status_code == 422
    assert buyer.get("/v1/clusters/c-000000000000").status_code == 404
    # Sign-in tokens cannot drive the node routes, and node credentials are per cluster.
    assert buyer.get("/v1/clusters/c-000000000000/nodes").status_code == 403
    assert buyer.get("/v1/clusters").json() == []


def manager_actor_pids(platform) -> list[int]:
    # Only among this platform's own processes (never by name machine-wide).
    return [
        p.pid
        for p in platform.owned_processes()
        if p.cmdline() and p.cmdline()[0].startswith("ray::ClusterManagerActor")
    ]


def test_kill_9_of_cluster_manager_during_provisioning(market, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    cid = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 1800}).json()["id"]
    wait_for(
        lambda: any(e["kind"] == "node_opened" for e in buyer.get(f"/v1/clusters/{cid}/events").json()),
        timeout_s=60,
        interval_s=0.1,
        what="the head node opened (launch in flight)",
    )
    (pid,) = manager_actor_pids(platform)
    os.kill(pid, 9)
    ended = wait_for(
        lambda: (
            (c := buyer.get(f"/v1/clusters/{cid}")).status_code == 200
            and c.json()["status"] in ("running", "failed")
            and c.json()
        ),
        timeout_s=120,
        interval_s=0.5,
        what="running or failed after the restart",
    )
    if ended["status"] == "failed":
        assert "restarted" in ended["reason"], ended["reason"]
    leases = [n["id"] for n in ended["nodes"]]
    buyer.delete(f"/v1/clusters/{cid}")
    wait_for(
        lambda: buyer.get(f"/v1/clusters/{cid}").json()["status"] in ("terminated", "failed"),
        timeout_s=60,
        what="ended",
    )
    wait_for(lambda: not lease_processes(leases), timeout_s=30, what="no orphaned processes")
    # The machines are leasable again.
    again = buyer.post("/v1/clusters", json={"num_workers": 2, "duration_s": 600})
    assert again.status_code == 202, again.text
    buyer.delete(f"/v1/clusters/{again.json()['id']}")
    wait_status(buyer, again.json()["id"], "terminated", timeout_s=90)
