"""One real platform per test session: Ray head, Serve app, detached actors, SQLite, on free ports."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from cli.platform import launcher as platform_launcher
from tests.integration.helpers import Api, LocalAgent, wait_for
from worker import procs

# Short, so that "offline after 3 missed beats" takes seconds; not so short that a busy 2-core machine misses beats.
HEARTBEAT_S = 2.0

# Every test signs up and in from 127.0.0.1, the generated-input test thousands of times: the
# per-address and overall sign-in/sign-up limits (unit-tested, and in-process in
# tests/unit/actors/access/test_throttle.py) would turn later tests' sign-ups into 429s. Cheap hashes too.
SETTINGS = {
    "login_failures_per_address_per_minute": 1_000_000,
    "signups_per_address_per_minute": 1_000_000,
    "signups_per_minute": 1_000_000,
    "password_hashes_per_minute": 1_000_000,
    "bcrypt_rounds": 4,
    # No GPU here: test agents read a fake NVML (--test-fake-nvml), whose checks only a test platform counts.
    "gpu_check_accepts_fake_nvml": True,
}


class RunningPlatform:
    def __init__(self, launcher: platform_launcher.PlatformLauncher, url: str, state_dir: Path, work_dir: Path):
        self.launcher = launcher
        self.url = url
        self.state_dir = state_dir
        self.work_dir = work_dir
        self._agents: list[LocalAgent] = []

    @property
    def record(self) -> dict:
        return json.loads((self.state_dir / "platform.json").read_text())

    def admin(self) -> Api:
        creds = json.loads((self.state_dir / "admin_credentials.json").read_text())
        r = Api(self.url).post("/v1/token", data=creds)
        assert r.status_code == 200, r.text
        return Api(self.url, r.json()["access_token"])

    def start_agent(self, provider: Api, **kwargs) -> LocalAgent:
        agent = LocalAgent(self.url, provider.username, provider.password, self.work_dir, **kwargs).start()
        self._agents.append(agent)
        return agent

    def owned_processes(self):
        return procs.owned_processes(self.record["owner_tag"])

    def stop_agents(self) -> None:
        for agent in self._agents:
            agent.stop(grace_s=3)
        self._agents.clear()


@contextlib.contextmanager
def running_platform(prefix: str = "dcl-it-", settings: dict | None = None):
    """A real platform on free ports in a temp dir of its own (settings: over SETTINGS); its agents, processes and
    files go after."""
    # Short paths: Ray's unix sockets live under the temp dir and are limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    state_dir, work_dir = root / "state", root / "work"
    work_dir.mkdir()
    port = procs.free_port()
    launcher = platform_launcher.PlatformLauncher(
        state_dir, port=port, providers=0, heartbeat_s=HEARTBEAT_S, settings={**SETTINGS, **(settings or {})}
    )
    try:
        result = launcher.up()
        running = RunningPlatform(launcher, result.api_url, state_dir, work_dir)
        try:
            yield running
        finally:
            running.stop_agents()
            launcher.down()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def platform():
    with running_platform() as running:
        yield running


@pytest.fixture
def agents(platform):
    """Agents started by a test are stopped after it, whatever happens."""
    yield platform
    platform.stop_agents()


@pytest.fixture(scope="module")
def market(platform):
    """Two provider machines (4 logical CPUs each) that stay up for one module's clusters."""
    agents, machines = [], []
    for _ in range(2):
        provider = Api.sign_up(platform.url, "provider")
        agents.append(platform.start_agent(provider, extra_args=("--cpus", "4")))
        machines.append(
            wait_for(
                lambda: [m for m in provider.get("/v1/machines").json() if m["status"] == "online"],
                timeout_s=60,
                what="market machine",
            )[0]
        )
    yield [m["id"] for m in machines]
    for agent in agents:
        agent.stop(grace_s=5)
