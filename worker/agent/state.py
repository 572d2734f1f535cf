"""The agent's settings (built by worker.agent.cli) and what it keeps on disk about its machine (machine.json)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from dcl_core import domain, ids, protocol, secret_files
from worker.agent import detect, node_address
from worker.agent.sandbox import base as sandbox_base

logger = logging.getLogger(__name__)

STATE_FILE = "machine.json"
_KEY_RE = re.compile(ids.MACHINE_KEY_PATTERN)


def default_state_dir() -> Path:
    return Path("~/.dcluster-agent").expanduser()


class AgentSettings(domain.StrictModel):
    """The agent's configuration, built by worker.agent.cli and passed in."""

    platform_url: str = Field(min_length=1, description="Base URL of the platform API")
    username: str = Field(min_length=1, description="Provider account")
    password: SecretStr | None = Field(
        default=None,
        description="Used once, to enroll the machine (None once it has an agent key); "
        "SecretStr so repr() and logs never show it",
    )
    name: str | None = Field(
        default=None, pattern=ids.MACHINE_NAME_PATTERN, description="Display name; default: hostname"
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    declared_gpus: int | None = Field(default=None, ge=0, le=detect.MAX_GPUS, description="Override NVML")
    declared_gpu_model: str = Field(default="Logical GPU", pattern=ids.GPU_MODEL_PATTERN)
    declared_gpu_memory_mb: int = Field(default=0, ge=0, le=10_000_000)
    declared_cpus: int | None = Field(default=None, ge=1, le=4096, description="Override the CPU count offered")
    price_per_gpu_hour: float = Field(default=0.0, ge=0, le=10_000)
    price_per_cpu_hour: float = Field(default=0.0, ge=0, le=10_000)
    poll_wait_s: float = Field(
        default=protocol.LONG_POLL_S,
        gt=0,
        le=protocol.MAX_LONG_POLL_S,
        description=f"Long-poll wait; the API holds a poll {protocol.MAX_LONG_POLL_S:g} s at most",
    )
    leave_timeout_s: float = Field(default=5.0, gt=0, le=60)
    stop_join_s: float = Field(default=3.0, ge=0, le=60, description="How long stop() waits for the loops")
    runtime: domain.SandboxRuntime = Field(
        default=domain.UNSANDBOXED,
        description="Where leases run; worker.agent.cli picks docker or bwrap, 'none' needs its own flag",
    )
    lease_memory_mb: int | None = Field(
        default=None,
        ge=64,
        le=1_000_000_000,
        description="Cap of a lease's memory; default: its CPUs' share of the RAM",
    )
    lease_pids: int = Field(default=4096, ge=64, le=1_000_000, description="Most processes and threads in one lease")
    gpu_device_dir: Path = Field(default=Path("/dev"), description="Where the GPUs' device nodes are")
    docker_image: str | None = Field(default=None, max_length=256, description="Image of leases under docker")
    node_ip: str | None = Field(
        default=None,
        description="The address this machine's leases advertise (worker.agent.node_address); "
        "default: the one towards the platform",
    )
    test_fake_nvml: str | None = Field(
        default=None,
        max_length=64 * 1024,
        description="Tests only: a fake NVML's description (worker.agent.fake_nvml) read instead of the GPUs; "
        "its GPU checks say so, and only a test platform counts them",
    )

    @field_validator("node_ip")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        return None if value is None else node_address.parse(value)

    def lease_limits(self, cpus: int | None, machine: domain.MachineSpec | None) -> sandbox_base.LeaseLimits:
        """A lease's limits under this agent's caps (sandbox_base.LeaseLimits.for_lease)."""
        return sandbox_base.LeaseLimits.for_lease(
            cpus, machine, memory_cap_mb=self.lease_memory_mb, pids=self.lease_pids
        )


class MachineState:
    """machine.json in the state dir (0600 in a 0700 dir, outside every lease's view): the stable
    machine_key, the last machine id, the machine's agent key once the provider's password enrolled it, and the
    platform's certificate authority pinned at enrollment (PEM; None: plain HTTP or the system's trust store)."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir).expanduser()
        self.path = self.dir / STATE_FILE
        if not self.dir.exists():
            secret_files.ensure_private_dir(self.dir)
        elif self.dir.stat().st_mode & 0o077:
            logger.warning("state dir %s is accessible to other users; consider chmod 700", self.dir)
        data = self._load()
        key, machine_id = data.get("machine_key"), data.get("machine_id")
        self.machine_id: str | None = machine_id if isinstance(machine_id, str) else None
        agent_key = data.get("agent_key")
        self.agent_key: str | None = agent_key if isinstance(agent_key, str) and agent_key else None
        platform_ca = data.get("platform_ca")
        self.platform_ca: str | None = platform_ca if isinstance(platform_ca, str) and platform_ca else None
        if isinstance(key, str) and _KEY_RE.match(key):
            self.machine_key = key
        else:
            self.machine_key = ids.new_machine_key()
            self.save()

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            backup = self.path.with_name(STATE_FILE + ".corrupt")
            os.replace(self.path, backup)  # keep it: the old key is the only link to the old machine
            logger.error("%s is unreadable (moved to %s); this machine gets a new machine_key", self.path, backup)
            return {}
        return data

    def save(self) -> None:
        # atomic: a crash never leaves half a key
        secret_files.write_secret_file(
            self.path,
            json.dumps(
                {
                    "machine_key": self.machine_key,
                    "machine_id": self.machine_id,
                    "agent_key": self.agent_key,
                    "platform_ca": self.platform_ca,
                },
                indent=2,
            )
            + "\n",
        )


def has_agent_key(state_dir: Path) -> bool:
    """Whether the machine is enrolled (its agent key kept in state_dir): the agent then needs no password."""
    try:
        return MachineState(state_dir).agent_key is not None
    except OSError:
        return False


def forget_agent_key(state_dir: Path) -> None:
    """`--enroll`: the machine keeps its machine_key, and enrolls again with the provider's password."""
    state = MachineState(state_dir)
    if state.agent_key:
        state.agent_key = None
        state.save()
        logger.info("the agent key kept in %s is forgotten: the machine enrolls again", state.path)


def machine_name(hostname: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", hostname)[:64] or "machine"
