"""Helpers for integration tests: polling, HTTP sessions, local agents."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from dcl_core import domain
from tests import lease_versions
from tests.waiting import wait_for  # noqa: F401 (re-exported for the integration tests)
from worker import procs
from worker.agent import stopping

BIN = Path(sys.executable).parent  # this venv's commands (dcluster, dcluster-agent)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Api:
    """A signed-in HTTP session against the platform."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def __getattr__(self, name):  # get/post/delete/... straight to httpx
        return getattr(self.http, name)

    @classmethod
    def sign_up(cls, base_url: str, role: str, username: str | None = None, password: str = "password123") -> Api:
        username = username or unique(role)
        anon = httpx.Client(base_url=base_url, timeout=30)
        r = anon.post("/v1/accounts", json={"username": username, "password": password, "role": role})
        assert r.status_code == 201, r.text
        r = anon.post("/v1/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        api = cls(base_url, r.json()["access_token"])
        api.username, api.password = username, password
        return api


def runtime_args() -> tuple[str, ...]:
    """The lease runtime of the suites' agents: $DCL_TEST_RUNTIME, else bwrap where it can run (root), else none.

    Pinned rather than the agent's own default (docker where a daemon answers) so that a run does not
    change runtime with the machine; the sandbox and escape suites run every runtime the machine has.
    """
    runtime = os.environ.get("DCL_TEST_RUNTIME") or ("bwrap" if os.geteuid() == 0 and shutil.which("bwrap") else "none")
    return ("--runtime", runtime, *((domain.UNSANDBOXED_FLAG,) if runtime == domain.UNSANDBOXED else ()))


class Commands:
    """`dcluster` as a user runs it: its own HOME and config dir, none of the caller's RAY_*/DCLUSTER_* variables."""

    def __init__(self, root: Path, state_dir: Path):
        self.state_dir = state_dir
        self.config_dir = root / "config"
        home = root / "home"
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DCLUSTER_"))}
        self.env.update(
            {
                "DCLUSTER_CONFIG_DIR": str(self.config_dir),
                "DCLUSTER_STATE_DIR": str(state_dir),
                "HOME": str(home),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )

    def __call__(self, *args: str, timeout_s: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dcluster"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )


class LocalAgent:
    """A real `dcluster-agent` process for one provider account, stopped by its owner tag."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        work_dir: Path,
        *,
        name: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.tag = unique("dcl-test-agent")
        self.state_dir = work_dir / self.tag
        self.state_dir.mkdir(parents=True, mode=0o700)
        password_file = self.state_dir / "password"
        password_file.write_text(password)
        password_file.chmod(0o600)
        if "--runtime" not in extra_args:
            extra_args = (*runtime_args(), *extra_args)
        self.cmd = [
            str(Path(sys.executable).parent / "dcluster-agent"),
            "--platform-url",
            base_url,
            "--username",
            username,
            "--password-file",
            str(password_file),
            "--state-dir",
            str(self.state_dir / "agent"),
            "--name",
            name or self.tag,
            # Free unless a test prices it (a later flag wins).
            "--price-per-gpu-hour",
            "0",
            "--price-per-cpu-hour",
            "0",
            *extra_args,
        ]
        self.log = self.state_dir / "agent.log"
        self.proc = None

    def start(self) -> LocalAgent:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = procs.spawn(self.cmd, env=env, log_path=self.log, owner_tag=self.tag)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop offering the machine (the agent's leave signal: it closes every lease and leaves), then make
        sure nothing of the agent is left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(stopping.LEAVE_SIGNAL)
            try:
                self.proc.wait(timeout=grace_s + 60)
            except subprocess.TimeoutExpired:
                pass
        procs.stop_owned(self.tag, grace_s=grace_s)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as systemd sends on a restart or an upgrade: the agent exits, its leases run on."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill9(self) -> None:
        for p in procs.owned_processes(self.tag):
            p.kill()
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class FakeMachines:
    """Machines registered through the API by the test itself (no agent: nothing answers their work),
    kept online by heartbeats from a background thread until stop(), which makes them leave."""

    def __init__(
        self,
        provider: Api,
        specs: list[dict],
        *,
        price_per_gpu_hour: float = 1.0,
        price_per_cpu_hour: float = 0.01,
        beat_s: float = 1.0,
    ):
        import threading

        self.provider = provider
        self.ids: list[str] = []
        for spec in specs:
            key = unique("fake-machine")
            r = provider.post(
                "/v1/machines",
                json={
                    "machine_key": key,
                    "name": key,
                    "spec": spec,
                    "price_per_gpu_hour": price_per_gpu_hour,
                    "price_per_cpu_hour": price_per_cpu_hour,
                },
            )
            assert r.status_code in (200, 201), r.text
            self.ids.append(r.json()["id"])
        self._stop = threading.Event()
        self._beat_s = beat_s
        self.slowest_beat_s = 0.0  # the longest a heartbeat took to be answered
        # A thread per machine: one slow answer on a busy platform must not make the others miss beats.
        self._threads = [
            threading.Thread(target=self._beat, args=(mid,), name=f"beat-{mid}", daemon=True) for mid in self.ids
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def spec(cpus: int = 1, gpus: int = 0, model: str = "NVIDIA T4") -> dict:
        return {
            "hostname": unique("fake"),
            "cpus": cpus,
            "memory_mb": 4096,
            "gpus_declared": True,
            "gpus": [{"index": i, "model": model, "memory_mb": 16000} for i in range(gpus)],
            **lease_versions.SPEC_FIELDS,
        }

    def _beat(self, machine_id: str) -> None:
        with httpx.Client(
            base_url=self.provider.base_url, timeout=10, headers=dict(self.provider.http.headers)
        ) as beats:
            while not self._stop.wait(self._beat_s):
                started = time.monotonic()
                try:
                    beats.post(f"/v1/machines/{machine_id}/heartbeat", json={})
                except httpx.HTTPError:
                    pass  # a busy platform: the next beat comes soon
                self.slowest_beat_s = max(self.slowest_beat_s, time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for mid in self.ids:
            self.provider.delete(f"/v1/machines/{mid}")
