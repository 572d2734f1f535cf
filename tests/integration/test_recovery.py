"""Durability: kill -9 of the registry actor's process, and `dcluster down` then `up`, lose nothing."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.helpers import Api, wait_for

pytestmark = pytest.mark.slow


def registry_actor_pids(platform) -> list[int]:
    # Only among the processes this platform owns (never by name machine-wide).
    return [
        p.pid
        for p in platform.owned_processes()
        if p.cmdline() and p.cmdline()[0].startswith("ray::ProviderRegistryActor")
    ]


def test_kill_9_of_registry_actor_loses_nothing(agents):
    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    platform.start_agent(provider)
    machine = wait_for(
        lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
        timeout_s=60,
        what="machine online",
    )[0]
    (pid,) = wait_for(lambda: registry_actor_pids(platform), timeout_s=10, what="registry actor process")
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: registry_actor_pids(platform) and registry_actor_pids(platform) != [pid],
        timeout_s=60,
        what="registry actor restarted",
    )
    # The old token still works (same secret), the account and machine are intact, heartbeats resume.
    wait_for(lambda: provider.get("/v1/accounts/me").status_code == 200, timeout_s=60, what="API answers again")
    relogin = Api(platform.url).post("/v1/token", data={"username": provider.username, "password": "password123"})
    assert relogin.status_code == 200
    got = provider.get(f"/v1/machines/{machine['id']}").json()
    assert got["spec"] == machine["spec"]
    beat = got["last_heartbeat"]
    wait_for(
        lambda: provider.get(f"/v1/machines/{machine['id']}").json()["last_heartbeat"] > beat,
        timeout_s=20,
        what="heartbeats after the restart",
    )


def test_down_then_up_keeps_accounts_and_machines(agents):
    platform = agents
    provider = Api.sign_up(platform.url, "provider")
    agent = platform.start_agent(provider)
    machine = wait_for(
        lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
        timeout_s=60,
        what="machine online",
    )[0]
    platform.launcher.down()
    assert platform.owned_processes() == []
    platform.launcher.up()
    wait_for(lambda: Api(platform.url).get("/healthz").status_code == 200, timeout_s=60, what="healthz")
    again = Api(platform.url).post("/v1/token", data={"username": provider.username, "password": "password123"})
    assert again.status_code == 200
    provider = Api(platform.url, again.json()["access_token"])
    # The agent kept running through the outage, backed off, and re-registered the same machine.
    wait_for(
        lambda: provider.get(f"/v1/machines/{machine['id']}").json()["status"] == "online",
        timeout_s=90,
        what="the same machine online again",
    )
    assert [m["id"] for m in provider.get("/v1/machines").json()] == [machine["id"]]
    assert agent.proc.poll() is None
