"""An agent restart or upgrade closes no lease: a real platform, two real agents (bwrap where it runs), a buyer's
cluster with a long job; each agent is restarted while it holds a lease (SIGTERM, as systemd sends on a restart
or an upgrade, then started again; kill -9, then started again). The leases' processes, the cluster and the
job run on, and the platform loses no lease. `dcluster-agent leave` then closes what its machine holds.

The platform's silence window (heartbeat interval x missed beats) must cover a restart: 2 s x 15 here, as a
busy test machine starts an agent slowly; in production 5 s x 3 by default, and systemd restarts the agent 2 s
after a crash (worker/agent/systemd/dcluster-agent.service)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import running_platform
from tests.integration.helpers import Api, LocalAgent, wait_for
from worker import procs

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
AGENT = str(Path(sys.executable).parent / "dcluster-agent")
JOB_S = 75  # long enough for both restarts to happen while it runs
JOB = f"""
import time, ray
ray.init()
@ray.remote
def answer():
    return "DONE"
time.sleep({JOB_S})
print("RESTART-JOB", ray.get(answer.remote()))
"""


@pytest.fixture(scope="module")
def roomy_platform():
    with running_platform("dcl-rs-", settings={"missed_heartbeats_offline": 15}) as running:
        yield running


def _ray(args: list[str], env_extra: dict, home: Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(env_extra, HOME=str(home))
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def _lease_processes(lease_ids: list[str]) -> set[tuple[int, float]]:
    return {(p.pid, p.create_time()) for lid in lease_ids for p in procs.owned_processes("dcl-lease-" + lid)}


def _lasting_processes(lease_ids: list[str]) -> dict[tuple[int, float], str]:
    """The leases' processes that live as long as the lease or the job: Ray's daemons, the job's driver, the
    sandbox (Ray's idle workers come and go by themselves)."""
    found = {}
    for lid in lease_ids:
        for p in procs.owned_processes("dcl-lease-" + lid):
            try:
                name, cmdline = p.name(), " ".join(p.cmdline())
            except psutil.Error:
                continue
            if name in ("raylet", "gcs_server", "bwrap") or "supervisor.py" in cmdline or "job.py" in cmdline:
                found[(p.pid, p.create_time())] = "job.py" if "job.py" in cmdline else name
    return found


def _events(buyer: Api, cid: str) -> list[dict]:
    return buyer.get(f"/v1/clusters/{cid}/events").json()


def _restart(agent: LocalAgent, provider: Api, machine_id: str, how: str) -> float:
    """Stop the agent (SIGTERM or kill -9), start it again; seconds from the stop to its first heartbeat."""
    stopped = time.time()
    if how == "SIGTERM":
        assert agent.terminate() == 0
    else:
        agent.kill9()
    agent.start()
    wait_for(
        lambda: (
            (m := provider.get(f"/v1/machines/{machine_id}").json())["last_heartbeat"] > stopped
            and m["status"] == "online"
        ),
        timeout_s=60,
        interval_s=0.2,
        what=f"the agent restarted after {how} heartbeats",
    )
    return time.time() - stopped


def test_restarting_the_agents_closes_no_lease(roomy_platform, tmp_path):
    platform = roomy_platform
    machines = {}
    for _ in range(2):
        provider = Api.sign_up(platform.url, "provider")
        agent = platform.start_agent(provider, extra_args=("--cpus", "4"))
        [m] = wait_for(
            lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
            timeout_s=90,
            what="machine online",
        )
        machines[m["id"]] = (agent, provider)
    buyer = Api.sign_up(platform.url, "buyer")
    r = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 1800})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    c = wait_for(
        lambda: (c := buyer.get(f"/v1/clusters/{cid}").json())["status"] == "running" and c,
        timeout_s=300,
        what="cluster running",
    )
    nodes = [n for n in c["nodes"] if n["status"] == "open"]
    lease_ids = [n["id"] for n in nodes]
    conn = buyer.get(f"/v1/clusters/{cid}/connection").json()
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.py").write_text(JOB)
    submitted = _ray(
        ["job", "submit", "--no-wait", "--address", conn["dashboard_url"], "--working-dir", str(tmp_path / "job")]
        + ["--", "python", "job.py"],
        conn["env"],
        tmp_path,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    before = wait_for(
        lambda: (found := _lasting_processes(lease_ids)) and "job.py" in found.values() and found,
        timeout_s=60,
        what="the job's driver running",
    )
    assert list(before.values()).count("raylet") == len(lease_ids), before

    gaps = {}
    hosts = sorted({n["machine_id"] for n in nodes})
    for machine_id, how in ((hosts[0], "SIGTERM"), (hosts[-1], "kill -9")):
        agent, provider = machines[machine_id]
        gaps.setdefault(how, []).append(_restart(agent, provider, machine_id, how))
        gone = {k: v for k, v in before.items() if not procs.pid_alive(*k)}
        assert gone == {}, f"lease processes ended with the agent's {how}"
    for machine_id in hosts:
        assert "runs on: reattached" in machines[machine_id][0].log_text()

    seen = {}

    def job_status() -> str | None:
        done = _ray(["job", "status", "--address", conn["dashboard_url"], job_id], conn["env"], tmp_path)
        seen["status"] = done.stdout + done.stderr
        said = seen["status"].lower()  # "Job '...' succeeded", or a status line: SUCCEEDED, FAILED, STOPPED
        return next((w for w in ("succeeded", "failed", "stopped") if w in said), None)

    try:
        status = wait_for(job_status, timeout_s=JOB_S + 120, interval_s=2, what="the job finished")
    except AssertionError:
        logs = _ray(["job", "logs", "--address", conn["dashboard_url"], job_id], conn["env"], tmp_path)
        raise AssertionError(f"{seen.get('status')}\n{logs.stdout}{logs.stderr}") from None
    assert status == "succeeded", seen["status"]
    logs = _ray(["job", "logs", "--address", conn["dashboard_url"], job_id], conn["env"], tmp_path)
    assert "RESTART-JOB DONE" in logs.stdout + logs.stderr, logs.stdout + logs.stderr
    c = buyer.get(f"/v1/clusters/{cid}").json()
    assert c["status"] == "running" and sorted(n["id"] for n in c["nodes"] if n["status"] == "open") == sorted(
        lease_ids
    ), c
    lost = [e for e in _events(buyer, cid) if e["kind"] in ("lease_lost", "degraded", "node_closed")]
    assert lost == [], lost
    assert all(procs.pid_alive(*k) for k, name in before.items() if name != "job.py")
    print(f"\nfirst heartbeat after the stop, s: {gaps}")

    # `dcluster-agent leave`: the running agent closes every lease, leaves the platform and exits 0.
    machine_id = hosts[-1]
    agent, provider = machines[machine_id]
    leaving = [n["id"] for n in nodes if n["machine_id"] == machine_id]
    left = subprocess.run(
        [AGENT, "leave", "--state-dir", str(agent.state_dir / "agent")], capture_output=True, text=True, timeout=240
    )
    assert left.returncode == 0, left.stdout + left.stderr
    assert agent.proc.wait(timeout=30) == 0
    assert _lease_processes(leaving) == set()
    assert provider.get(f"/v1/machines/{machine_id}").json()["status"] == "gone"
    assert buyer.delete(f"/v1/clusters/{cid}").status_code < 300
    wait_for(
        lambda: buyer.get(f"/v1/clusters/{cid}").json()["status"] in ("terminated", "failed"),
        timeout_s=180,
        what="cluster ended",
    )
    wait_for(lambda: not _lease_processes(lease_ids), timeout_s=60, what="every lease process gone")
