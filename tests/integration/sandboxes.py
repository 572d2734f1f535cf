"""Real lease sandboxes without Ray: an agent's dir and a LeaseRunner on each runtime this machine has.

bwrap always (CI installs it; the agent must be root to give each lease its own uid and cgroup). docker
where `docker info` answers; in CI a missing daemon is a failure (.ci/run starts one), never a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from dcl_core import protocol
from worker.agent import leases, sandbox
from worker.agent.sandbox import base

NEEDS_ROOT_AND_BWRAP = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("bwrap"),
    reason="the sandbox runtimes need root and bubblewrap (CI installs it)",
)
_NO_DOCKER = not os.environ.get("CI") and not sandbox.docker_answers()
RUNTIMES = [
    "bwrap",
    pytest.param("docker", marks=pytest.mark.skipif(_NO_DOCKER, reason="no docker daemon answers here")),
]
DENIED = {"ENOENT", "EACCES", "EROFS", "EPERM"}


@pytest.fixture
def agent_dir():
    """A provider's agent: its password file and state, 0600 in a 0700 dir, as dcluster-agent keeps them."""
    root = Path(f"/tmp/dcl-sbx-{secrets.token_hex(4)}")  # short: Ray socket paths in the leases stay short
    state = root / "agent"
    state.mkdir(parents=True, mode=0o700)
    (root / "password").write_text("provider-secret-pw")
    (state / "machine.json").write_text('{"machine_key": "mk-secret"}')
    for f in (root / "password", state / "machine.json"):
        f.chmod(0o600)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def make_runner(
    agent_dir: Path, runtime_name: str, *, memory_mb: int | None = None, gpu_dev_root: Path | None = None
) -> leases.LeaseRunner:
    runtime = sandbox.make_runtime(runtime_name, gpu_dev_root=gpu_dev_root or Path("/dev"))
    base_env = {**os.environ, "DCLUSTER_AGENT_PASSWORD": "provider-secret-pw"}
    return leases.LeaseRunner(
        agent_dir / "agent" / "leases",
        node_ip="127.0.0.1",
        base_env=base_env,
        runtime=runtime,
        limits_fn=lambda _p: base.LeaseLimits(cpus=1, memory_mb=memory_mb, pids=512),
    )


def open_lease(runner: leases.LeaseRunner, gpus: list[int] = (), lease_id: str | None = None) -> str:
    lease_id = lease_id or "l-" + secrets.token_hex(6)
    runner.open(
        protocol.LeaseOpen(
            lease_id=lease_id,
            cluster_id="c-" + secrets.token_hex(6),
            role="worker",
            gpu_indices=list(gpus),
            ray_auth_token=secrets.token_hex(20),
            cpus=1,
        )
    )
    return lease_id
