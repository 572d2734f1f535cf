"""Real provider agents against the real platform: register, heartbeat, offline, return, leave, isolation."""

from __future__ import annotations

import pytest

from dcl_core import domain
from tests import lease_versions
from tests.integration.helpers import Api, LocalAgent, wait_for

pytestmark = pytest.mark.slow


def machines_of(provider: Api) -> list[dict]:
    r = provider.get("/v1/machines")
    assert r.status_code == 200, r.text
    return r.json()


def online(provider: Api) -> list[dict]:
    return [m for m in machines_of(provider) if m["status"] == "online"]


def test_agent_registers_heartbeats_goes_offline_and_comes_back(agents):
    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    agent = platform.start_agent(
        provider, extra_args=("--gpus", "2", "--gpu-model", "Test GPU 24GB", "--price-per-gpu-hour", "0.75")
    )
    machine = wait_for(lambda: (online(provider) or [None])[0], timeout_s=60, what="agent's machine online")
    assert machine["spec"]["gpus_declared"] is True and len(machine["spec"]["gpus"]) == 2
    assert machine["spec"]["cpus"] >= 1 and machine["spec"]["memory_mb"] > 0
    first_beat = machine["last_heartbeat"]
    wait_for(
        lambda: provider.get(f"/v1/machines/{machine['id']}").json()["last_heartbeat"] > first_beat,
        timeout_s=15,
        what="a later heartbeat",
    )
    assert provider.get(f"/v1/machines/{machine['id']}").json()["usage"] is not None

    offers = provider.get("/v1/offers").json()
    test_gpu = next(o for o in offers if o["gpu_model"] == "Test GPU 24GB")
    assert test_gpu["gpus"] >= 2 and test_gpu["price_per_gpu_hour_max"] >= 0.75
    # Grouped by what its leases run (the agent's own Ray and Python here), which the platform launches.
    here = domain.python_minor(lease_versions.PYTHON)
    assert (test_gpu["ray_version"], test_gpu["python_version"], test_gpu["launchable"]) == (
        lease_versions.RAY,
        here,
        True,
    )

    agent.kill9()  # no graceful leave: the platform notices the silence
    wait_for(lambda: machines_of(provider)[0]["status"] == "offline", timeout_s=15, what="machine offline")
    assert all(o["gpu_model"] != "Test GPU 24GB" for o in provider.get("/v1/offers").json())

    agent.start()  # same state dir: same machine key, so the same machine comes back
    wait_for(lambda: online(provider), timeout_s=60, what="machine back online")
    assert [m["id"] for m in machines_of(provider)] == [machine["id"]]

    agent.stop()  # SIGTERM: graceful leave
    wait_for(lambda: machines_of(provider)[0]["status"] == "gone", timeout_s=15, what="machine gone")
    assert "leaving" in agent.log_text().lower() or "left" in agent.log_text().lower()


def test_providers_see_only_their_own_machines_admin_sees_all(agents):
    platform = agents
    alice, bob = Api.sign_up(platform.url, "provider"), Api.sign_up(platform.url, "provider")
    platform.start_agent(alice)
    machine = wait_for(lambda: (online(alice) or [None])[0], timeout_s=60, what="alice's machine online")
    assert machines_of(bob) == []
    assert bob.get(f"/v1/machines/{machine['id']}").status_code == 404
    assert bob.post(f"/v1/machines/{machine['id']}/heartbeat", json={}).status_code == 404
    assert bob.delete(f"/v1/machines/{machine['id']}").status_code == 404
    assert bob.get(f"/v1/machines/{machine['id']}/work", params={"wait_s": 0}).status_code == 404
    admin_view = platform.admin().get("/v1/machines").json()
    assert machine["id"] in [m["id"] for m in admin_view]
    assert alice.get(f"/v1/machines/{machine['id']}").json()["status"] == "online"


def test_the_password_enrolls_once_then_a_revoked_machine_key_stops_the_agent(agents):
    """Issue 8 item 2 on the real thing: the key is the agent's only credential after enrollment, it
    speaks for its own machine alone, and a revoked key gets 401 at once and stops the agent."""
    import json
    import stat

    import httpx

    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    first, second = platform.start_agent(provider), platform.start_agent(provider)
    wait_for(lambda: len(online(provider)) == 2, timeout_s=90, what="both machines online")
    state_file = first.state_dir / "agent" / "machine.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    key = json.loads(state_file.read_text())["agent_key"]
    machine_id = key.split(".")[1]
    other_id = json.loads((second.state_dir / "agent" / "machine.json").read_text())["machine_id"]
    assert key not in first.log_text() and key.split(".")[2] not in first.log_text()

    keyed = httpx.Client(base_url=platform.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    try:
        assert keyed.post(f"/v1/machines/{machine_id}/heartbeat", json={}).status_code == 200
        # One machine's key can neither read nor answer another machine's work, nor act as the provider.
        assert keyed.get(f"/v1/machines/{other_id}/work", params={"wait_s": 0}).status_code == 404
        assert keyed.post(f"/v1/machines/{other_id}/heartbeat", json={}).status_code == 404
        assert (
            keyed.post(
                f"/v1/machines/{other_id}/results/w-000000000000",
                json={"ok": True, "exit_code": 0, "output": "", "data": {}},
            ).status_code
            == 404
        )
        assert keyed.get("/v1/machine-keys").status_code == 401
        assert keyed.get("/v1/clusters").status_code == 401
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert (
            httpx.post(
                f"{platform.url}/v1/machines/{machine_id}/heartbeat",
                json={},
                timeout=30,
                headers={"Authorization": f"Bearer {forged}"},
            ).status_code
            == 401
        )

        # Restarted without any password, the agent comes back on its key alone.
        first.stop()
        wait_for(
            lambda: provider.get(f"/v1/machines/{machine_id}").json()["status"] == "gone",
            timeout_s=30,
            what="machine gone",
        )
        (first.state_dir / "password").write_text("")
        first.start()
        wait_for(
            lambda: provider.get(f"/v1/machines/{machine_id}").json()["status"] == "online",
            timeout_s=90,
            what="machine back online on its key",
        )
        assert "signed in as" not in first.log_text().split("received SIGUSR1")[-1]

        keys = provider.get("/v1/machine-keys").json()
        [mine] = [k for k in keys if k["machine_id"] == machine_id]
        assert mine["active"] and len(keys) == 2 and all("hash" not in str(k) for k in keys)
        stranger = Api.sign_up(platform.url, "provider")
        assert stranger.delete(f"/v1/machine-keys/{mine['id']}").status_code == 404
        assert provider.delete("/v1/machine-keys/k-nothex").status_code == 422

        r = provider.delete(f"/v1/machine-keys/{mine['id']}")
        assert r.status_code == 200 and not r.json()["active"], r.text
        refused = keyed.post(f"/v1/machines/{machine_id}/heartbeat", json={})
        assert refused.status_code == 401 and "revoked" in refused.text
        assert keyed.get(f"/v1/machines/{machine_id}/work", params={"wait_s": 0}).status_code == 401
        assert first.proc.wait(timeout=60) == 3  # the agent stopped at its next heartbeat, and says why
        assert "refused this machine's agent key" in first.log_text()
        assert json.loads(state_file.read_text())["agent_key"] is None
        assert provider.get(f"/v1/machines/{machine_id}").json()["status"] != "online"
        assert provider.get(f"/v1/machines/{other_id}").json()["status"] == "online"  # the other one is untouched
    finally:
        keyed.close()


# A newer agent release: the same agent, announcing the next protocol version.
NEWER_AGENT = (
    "import sys; from dcl_core import protocol; protocol.PROTOCOL_VERSION += 1; "
    "from worker.agent import cli; sys.exit(cli.main(sys.argv[1:]))"
)


def test_an_agent_of_another_protocol_version_exits_with_the_platforms_426(agents):
    """Over real HTTP to the real platform: the newer agent is refused at its registration, says why with
    both versions, and exits 4 (the service does not restart it); its machine never comes online.
    `doctor` through the agent's own client finds the platform, and the same clock."""
    import subprocess
    import sys

    from dcl_core import protocol

    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    agent = LocalAgent(platform.url, provider.username, provider.password, platform.work_dir)
    agent.cmd = [sys.executable, "-c", NEWER_AGENT, *agent.cmd[1:]]
    try:
        code = agent.start().proc.wait(timeout=90)
    finally:
        agent.stop()
    log = agent.log_text()
    mismatch = (
        f"this agent speaks protocol {protocol.PROTOCOL_VERSION + 1} and the platform protocol "
        f"{protocol.PROTOCOL_VERSION}"
    )
    assert code == 4 and mismatch in log, log[-2000:]
    assert online(provider) == []

    done = subprocess.run(
        [sys.executable, "-m", "worker.agent.cli", "doctor", "--platform-url", platform.url, "--runtime", "bwrap"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"ok    platform {platform.url}: answers" in done.stdout, done.stdout
    assert f"protocol {protocol.PROTOCOL_VERSION}" in done.stdout and "ok    clock:" in done.stdout
