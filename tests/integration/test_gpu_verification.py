"""GPUs shown as declared or verified: a real agent, a real check lease in its bwrap sandbox, a real platform.

No GPU here: the agent reads a fake NVML (`--test-fake-nvml`, counted only because this test platform sets
gpu_check_accepts_fake_nvml) and its GPUs' device nodes are regular files (`--gpu-device-dir`)."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from tests.integration.helpers import Api, runtime_args, unique, wait_for

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}
LEASE_UID_BASE = 1_200_000_000  # worker.agent.sandbox: a lease's own uid under bwrap

pytestmark = pytest.mark.skipif("bwrap" not in runtime_args(), reason="the check lease's sandbox needs bwrap (root)")


@pytest.fixture
def fake_gpus(agents):
    root = Path(f"/tmp/dcl-fake-gpus-{secrets.token_hex(3)}")
    dev = root / "dev"
    dev.mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).write_text(name)
    nvml = root / "nvml.json"
    nvml.write_text(json.dumps({"driver_version": "550.54.15", "gpus": [H100, H100]}))
    yield dev, nvml
    shutil.rmtree(root, ignore_errors=True)


def _verification(provider: Api, machine_id: str) -> dict:
    return provider.get(f"/v1/machines/{machine_id}").json()["gpu_verification"]


def test_detected_gpus_are_verified_in_the_sandbox_and_a_forged_claim_is_flagged(agents, fake_gpus):
    platform, (dev, nvml) = agents, fake_gpus
    provider = Api.sign_up(platform.url, "provider")
    agent = platform.start_agent(
        provider, extra_args=("--cpus", "2", "--test-fake-nvml", str(nvml), "--gpu-device-dir", str(dev))
    )
    machine = wait_for(
        lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
        timeout_s=90,
        what="the machine online",
    )[0]
    mid = machine["id"]
    assert machine["spec"]["gpus_declared"] is False and machine["spec"]["sandbox"] == "bwrap"
    verified = wait_for(
        lambda: (v := _verification(provider, mid))["status"] == "verified" and v,
        timeout_s=120,
        what=f"machine verified (agent log: {agent.log})",
    )
    assert verified["nvml"] == "fake" and [g["model"] for g in verified["seen"]] == [H100["name"]] * 2
    assert verified["uid"] >= LEASE_UID_BASE  # produced inside the sandbox, as the lease's own user
    assert any(b["device"] == "cpu" and b["gflops"] > 0 for b in verified["benchmarks"])
    offer = next(o for o in provider.get("/v1/offers").json() if o["gpu_model"] == H100["name"])
    assert offer["gpu_verification"].get("verified", 0) >= 1 and offer["verified_gpus"] >= 2

    # The provider tries to mark its machine verified, or to claim more than it has.
    key = json.loads((agent.state_dir / "agent" / "machine.json").read_text())
    as_agent = Api(platform.url, key["agent_key"])
    other = Api.sign_up(platform.url, "provider").post(
        "/v1/machines",
        json={"machine_key": unique("mk"), "name": "other", "spec": {"hostname": "o", "cpus": 1, "memory_mb": 1024}},
    )
    assert other.status_code == 201, other.text
    forged = {
        "ok": True,
        "exit_code": 0,
        "data": {},
        "output": "DCL_GPU_CHECK "
        + json.dumps(
            {"nvml": "nvml", "gpus": [{"index": i, "model": "NVIDIA H200", "memory_mb": 143771} for i in range(4)]}
        ),
    }
    for target in (mid, other.json()["id"]):  # a check the platform never started, on its machine or another
        r = as_agent.post(f"/v1/machines/{target}/results/w-{secrets.token_hex(6)}", json=forged)
        assert r.status_code == 404, r.text
    claim = {
        "hostname": "h",
        "cpus": 2,
        "memory_mb": 4096,
        "sandbox": "bwrap",
        "gpus": [{"index": i, "model": "NVIDIA H200", "memory_mb": 143771} for i in range(4)],
    }
    body = {"machine_key": key["machine_key"], "name": machine["name"], "spec": claim}
    r = as_agent.post("/v1/machines", json={**body, "spec": {**claim, "gpu_verification": "verified"}})
    assert r.status_code == 422, r.text
    r = as_agent.post("/v1/machines", json=body)  # registered again with a claim of 4 H200s
    assert r.status_code == 201 and r.json()["gpu_verification"]["status"] == "pending", r.text
    flagged = wait_for(
        lambda: (v := _verification(provider, mid))["status"] == "mismatch" and v,
        timeout_s=120,
        what="the forged claim flagged",
    )
    assert "count: the machine claims 4 GPU(s), the check lease saw 2" in flagged["differences"]
    assert "GPU 0 model: claimed 'NVIDIA H200', seen 'NVIDIA H100 80GB HBM3'" in flagged["differences"]
    assert "GPU 0 memory: claimed 143771 MiB, seen 81559 MiB" in flagged["differences"]
    # Nothing of the check lease is left on the machine.
    assert not list((agent.state_dir / "agent" / "leases").glob("l-*"))


def test_declared_and_cpu_only_machines_are_shown_as_such(agents):
    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    platform.start_agent(provider, extra_args=("--cpus", "1", "--gpus", "2", "--gpu-model", "FakeGPU"))
    cpu_only = Api.sign_up(platform.url, "provider")
    platform.start_agent(cpu_only, extra_args=("--cpus", "1", "--gpus", "0"))
    for account, status in ((provider, "declared"), (cpu_only, "no_gpus")):
        machine = wait_for(
            lambda: [m for m in account.get("/v1/machines").json() if m["status"] == "online"],
            timeout_s=90,
            what="machine online",
        )[0]
        assert machine["gpu_verification"]["status"] == status
