"""The escape suite: a buyer's real job on a real sub-cluster tries to get out, next to another buyer's cluster.

On every runtime this machine has (bwrap always; docker where `docker info` answers), two provider
agents each offer 4 fake GPUs (regular files named like NVIDIA's device nodes). Alice's cluster
runs beside Bob's on the same two machines; Bob's job (`ray job submit` with his cluster's token)
tries each escape of issue 8. Each attempt must be seen to fail, with the denial named; Alice's
cluster keeps running; nothing of Bob's leases survives their close.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.integration import sandboxes
from tests.integration.helpers import Api, wait_for
from tests.integration.test_clusters import RAY, lease_processes, submit, wait_status
from worker.agent.sandbox import docker as sandbox_docker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("bwrap"), reason="sandboxes need root and bubblewrap (CI installs it)"
    ),
]

JOB_DIR = Path(__file__).resolve().parent / "escape_job"
DENIED = {"ENOENT", "EACCES", "EROFS", "EPERM"}
LEASE_MEMORY_MB = 2500
RUNTIMES = sandboxes.RUNTIMES


@pytest.fixture(scope="module", params=RUNTIMES)
def gpu_market(request, platform):
    """Two machines with 4 fake GPUs each, leases in the runtime under test, 2.5 GB per lease at most."""
    runtime = request.param
    dev = Path(f"/tmp/dcl-fake-dev-{secrets.token_hex(3)}")
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).write_text(name)
    agents, providers = [], []
    for _ in range(2):
        provider = Api.sign_up(platform.url, "provider")
        agents.append(
            platform.start_agent(
                provider,
                extra_args=(
                    "--cpus",
                    "4",
                    "--gpus",
                    "4",
                    "--gpu-model",
                    "FakeGPU",
                    "--gpu-device-dir",
                    str(dev),
                    "--runtime",
                    runtime,
                    "--lease-memory-mb",
                    str(LEASE_MEMORY_MB),
                ),
            )
        )
        providers.append(provider)
    for provider in providers:
        wait_for(
            lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
            timeout_s=90,
            what="GPU machine online",
        )
    yield runtime, agents
    for agent in agents:
        agent.stop(grace_s=5)
    shutil.rmtree(dev, ignore_errors=True)


def _lease_dir(agents, lease_id: str) -> Path:
    for agent in agents:
        path = agent.state_dir / "agent" / "leases" / lease_id
        if path.exists():
            return path
    raise AssertionError(f"lease {lease_id} is on no agent")


def _with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if f"sleep {marker}" in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def _job(
    conn: dict, tmp_path: Path, *args: str, timeout_s: float = 400, wait: bool = True
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    env.update(conn["env"])
    return subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            conn["dashboard_url"],
            "--working-dir",
            str(JOB_DIR),
            *(() if wait else ("--no-wait",)),
            "--",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_a_buyers_job_cannot_get_out_of_its_leases(gpu_market, platform, tmp_path):
    runtime, agents = gpu_market
    alice, bob = Api.sign_up(platform.url, "buyer"), Api.sign_up(platform.url, "buyer")
    spec = {"num_workers": 1, "gpus_per_worker": 1, "gpu_model": "FakeGPU", "duration_s": 1800}
    a = alice.post("/v1/clusters", json=spec)
    b = bob.post("/v1/clusters", json=spec)
    assert a.status_code == b.status_code == 202, a.text + b.text
    ca = wait_status(alice, a.json()["id"], "running", timeout_s=400)
    cb = wait_status(bob, b.json()["id"], "running", timeout_s=400)
    alice_leases = [n["id"] for n in ca["nodes"]]
    bob_leases = [n["id"] for n in cb["nodes"]]
    alice_head = next(n["id"] for n in ca["nodes"] if n["role"] == "head")
    for n in ca["nodes"] + cb["nodes"]:  # the machines say they are sandboxed, and with which runtime
        assert n["status"] == "open"
    offers = bob.get("/v1/offers").json()
    assert offers and all(o["sandboxed"] for o in offers), offers

    marker = f"{7000 + secrets.randbelow(999)}.{secrets.randbelow(999)}"
    alice_head_dir = _lease_dir(agents, alice_head)
    reads = {
        "platform_jwt_secret": str(platform.state_dir / "jwt_secret"),
        "platform_ray_auth_token": str(platform.state_dir / "ray_auth_token"),
        "platform_database": str(platform.state_dir / "platform.db"),
        "other_buyer_ray_auth_token": str(alice_head_dir / "ray_auth_token"),
        "other_buyer_bootstrap_config": str(alice_head_dir / "home" / "ray_bootstrap_config.yaml"),
        "shadow": "/etc/shadow",
    }
    writes = {
        "outside_root": "/escaped",
        "outside_usr": "/usr/lib/escaped",
        "platform_state_dir": str(platform.state_dir / "escaped"),
        "other_buyer_home": str(alice_head_dir / "home" / "escaped"),
    }
    markers: dict[str, list[str]] = {}
    for i, agent in enumerate(agents):
        reads[f"provider_password_file_{i}"] = str(agent.state_dir / "password")
        reads[f"agent_state_{i}"] = str(agent.state_dir / "agent" / "machine.json")
        reads[f"agent_environ_{i}"] = f"/proc/{agent.proc.pid}/environ"
        markers[f"agent_environ_{i}"] = [agent.tag]  # the agent's own environment names its owner tag
        writes[f"agent_state_dir_{i}"] = str(agent.state_dir / "agent" / "escaped")
    canary_dir = Path(f"/tmp/dcl-canary-{secrets.token_hex(4)}")  # root-only, outside every lease
    canary_dir.mkdir(mode=0o700)
    canary = secrets.token_hex(32)
    (canary_dir / "canary").write_text(canary)
    (canary_dir / "canary").chmod(0o600)
    reads["canary"] = str(canary_dir / "canary")
    targets = {
        "reads": reads,
        "writes": writes,
        "markers": markers,
        "sleep_marker": marker,
        "grow_mb": LEASE_MEMORY_MB + 1000,
        "canary": str(canary_dir / "canary"),
        "provider_password": "password123",
        "agent_keys": [json.loads((a.state_dir / "agent" / "machine.json").read_text())["agent_key"] for a in agents],
    }
    conn = bob.get(f"/v1/clusters/{cb['id']}/connection").json()
    job = _job(conn, tmp_path, "python", "escape.py", json.dumps(targets))
    output = job.stdout + job.stderr
    line = next((x for x in output.splitlines() if x.startswith("ESCAPE_RESULT ")), None)
    assert line, output[-4000:]
    got = json.loads(line.split(" ", 1)[1])
    shutil.rmtree(canary_dir)
    assert canary not in output

    # The launcher's own credential runs commands that turn their logs into links to the canary, a FIFO, a hard
    # link, or swap the logs dir: every answer carries none of it, and says why it is refused.
    attacks = got.pop("exec_attacks")
    assert len(attacks) == 2 * 4, attacks  # head and worker, four attacks each
    for name, answer in attacks.items():
        assert not answer["ok"], (name, answer)
        expected = {
            "symlinked_log": "was replaced while the command ran",
            "fifo_log": "was replaced while the command ran",
            "hard_linked_log": "ln: failed to access",  # not in the lease's view
            "symlinked_logs_dir": "mv: cannot move",
        }[name.split(":")[1]]  # a mount point in the sandbox
        assert expected in answer["output"], (name, answer)

    # Every read and write of what is not the lease's own: denied, and the denial named.
    for kind in ("reads", "writes"):
        for name, result in got[kind].items():
            # The agent's host pid may name one of the lease's own processes inside its pid namespace: read,
            # but not the agent's (its owner tag is not in it).
            allowed = DENIED | {"ok-not-theirs"} if name in markers else DENIED
            assert result in allowed, (kind, name, result)
    assert not Path("/escaped").exists() and not (platform.state_dir / "escaped").exists()
    assert not got["env_has_provider_password"] and not got["env_has_agent_key"]
    assert not {"DCLUSTER_AGENT_PASSWORD", "DCLUSTER_JWT_SECRET", "RAY_AUTH_TOKEN"} & set(got["env_names"])
    # The job runs under a seccomp filter, and cannot make a user namespace (its uid 0 there is the door to most
    # kernel escapes): bwrap's filter, or Docker's default profile.
    assert got["kernel"]["seccomp"] == "2", got["kernel"]
    assert "Operation not permitted" in got["kernel"]["unshare_user"], got["kernel"]
    assert got["pid_namespace_processes"] < 60  # the lease's own processes, not the machine's
    # The GPU worker: one device node whatever CUDA_VISIBLE_DEVICES says, and it is the leased one.
    gpu = got["gpu"]
    assert gpu["ray_cuda_visible_devices"] == "0" and len(gpu["nvidia_nodes"]) == 1, gpu
    assert sum(v == "ok" for v in gpu["opened"].values()) == 1 and all(
        v in DENIED for k, v in gpu["opened"].items() if k not in gpu["nvidia_nodes"]
    ), gpu
    # Past the memory limit: killed (SIGKILL by the OOM killer, or Ray's memory monitor before it).
    mem_line = next((x for x in output.splitlines() if x.startswith("ESCAPE_MEMORY ")), None)
    if mem_line:
        mem = json.loads(mem_line.split(" ", 1)[1])
        assert not mem["grew"] and mem["returncode"] in (-9, 137), mem
    else:  # Ray's memory monitor ended the whole job first: still killed, never grown
        # (Ray's report quotes the command, `print('GREW')`: only a line that is just GREW means it grew.)
        grew = any(line.strip() == "GREW" for line in output.splitlines())
        assert not grew and ("OutOfMemory" in output or "memory" in output.lower()), output[-3000:]
    # The hidden sleeper runs now (it did start) ...
    assert len(_with_marker(marker)) == 1

    # `ray stop` from Bob's job reaches Bob's head only; Alice's cluster runs on, with every process.
    alice_before = {p.pid for p in lease_processes(alice_leases) if _name(p) in ("raylet", "gcs_server")}
    assert len(alice_before) == 3  # the head's GCS and raylet, the worker's raylet
    stop = _job(conn, tmp_path, "ray", "--logging-level=info", "stop", "--force", timeout_s=120, wait=False)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    bob_head = next(n["id"] for n in cb["nodes"] if n["role"] == "head")
    wait_for(
        lambda: not [p for p in lease_processes([bob_head]) if _name(p) == "raylet"],
        timeout_s=60,
        what="Bob's head stopped by his own `ray stop`",
    )
    assert {p.pid for p in lease_processes(alice_leases)} >= alice_before  # still the same ones, all alive
    alice_conn = alice.get(f"/v1/clusters/{ca['id']}/connection").json()
    ok = submit(alice_conn["env"], alice_conn["dashboard_url"], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # ... and nothing of Bob's leases outlives their close: processes, files, cgroups, containers.
    bob.delete(f"/v1/clusters/{cb['id']}")
    wait_for(
        lambda: bob.get(f"/v1/clusters/{cb['id']}").json()["status"] in ("terminated", "failed"),
        timeout_s=120,
        what="Bob's cluster ended",
    )
    wait_for(lambda: not _with_marker(marker), timeout_s=30, what="the hidden sleeper gone")
    wait_for(lambda: not lease_processes(bob_leases), timeout_s=30, what="Bob's processes gone")
    for lease in bob_leases:
        assert not any((agent.state_dir / "agent" / "leases" / lease).exists() for agent in agents)
        assert not Path(f"/tmp/dcl-{lease}").exists()
        if runtime == "bwrap":
            assert not Path(f"/sys/fs/cgroup/pids/dcluster/{lease}").exists()
        else:
            assert sandbox_docker.remove_containers(lease) == []
    assert alice.get(f"/v1/clusters/{ca['id']}").json()["status"] == "running"
    alice.delete(f"/v1/clusters/{ca['id']}")
    wait_status(alice, ca["id"], "terminated", timeout_s=120)
    wait_for(lambda: not lease_processes(alice_leases), timeout_s=30, what="Alice's processes gone")
