"""Real provider agents against the real platform: register, heartbeat, offline, return, leave, isolation."""

from __future__ import annotations

import pytest

from tests.integration.helpers import Api, wait_for

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
    agent = platform.start_agent(provider, extra_args=("--gpus", "2", "--gpu-model", "Test GPU 24GB",
                                                       "--price-per-gpu-hour", "0.75"))
    machine = wait_for(lambda: (online(provider) or [None])[0], timeout_s=60, what="agent's machine online")
    assert machine["spec"]["gpus_declared"] is True and len(machine["spec"]["gpus"]) == 2
    assert machine["spec"]["cpus"] >= 1 and machine["spec"]["memory_mb"] > 0
    first_beat = machine["last_heartbeat"]
    wait_for(lambda: provider.get(f"/v1/machines/{machine['id']}").json()["last_heartbeat"] > first_beat,
             timeout_s=15, what="a later heartbeat")
    assert provider.get(f"/v1/machines/{machine['id']}").json()["usage"] is not None

    offers = provider.get("/v1/offers").json()
    test_gpu = next(o for o in offers if o["gpu_model"] == "Test GPU 24GB")
    assert test_gpu["gpus"] >= 2 and test_gpu["price_per_gpu_hour_max"] >= 0.75

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
