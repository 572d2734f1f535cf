"""The environment a lease's commands run with: a few of the agent's variables, the lease's settings, the command's."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from dcl_core import domain, protocol
from worker import procs
from worker.agent import lease_files
from worker.agent.sandbox import base as sandbox

# The only variables of the agent's environment a lease gets: nothing of the agent's (its password,
# its Ray settings, its HOME) reaches a buyer's node.
KEPT_ENV = frozenset({"PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM"})
# JSON objects the launcher sets per node type; the lease's own entries are merged over them.
_OVERRIDE_ENV = {"RAY_OVERRIDE_RESOURCES": "resources", "RAY_OVERRIDE_LABELS": "labels"}


class LeaseEnvironment:
    """Builds each command's environment from the agent's kept variables and the lease it runs in."""

    def __init__(
        self,
        source: Mapping[str, str],
        *,
        runtime: sandbox.Runtime,
        check_env: Mapping[str, str] | None = None,
    ):
        self._base_env = {k: v for k, v in source.items() if k in KEPT_ENV}
        self._runtime = runtime
        self._check_env = dict(check_env or {})  # only GPU check leases get these (the test-only fake NVML)
        # The agent's own interpreter first (its `ray` and `python`), the same for every command: worked out once.
        # Nothing is added to PYTHONPATH: that interpreter imports this package as installed, as any install would.
        bin_dir = str(Path(sys.executable).parent)
        self._path = os.pathsep.join(p for p in (bin_dir, self._base_env.get("PATH", "")) if p)

    def of(self, lease: lease_files.Lease, command_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a command of this lease: agent env, lease settings, then the command's env."""
        env = dict(self._base_env)
        env["HOME"] = str(lease.home)
        if lease.uid is not None:
            env["USER"] = env["LOGNAME"] = lease_files.LEASE_USER
        env["PATH"] = self._path
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(lease.token_path)
        env.update(lease.ports.env())
        # The node's address too: Ray's own guess may be one nothing else reaches (worker.agent.node_address).
        flags = lease.ports.start_flags(head=lease.role == domain.NodeRole.HEAD, temp_dir=lease.temp_dir)
        env[protocol.ENV_PORT_FLAGS] = " ".join([*flags, "--node-ip-address", lease.node_ip])
        env[protocol.ENV_LEASE_ID] = lease.lease_id
        if lease.role == domain.NodeRole.WORKER and lease.head_gcs_port is not None:
            env[protocol.ENV_HEAD_GCS_PORT] = str(lease.head_gcs_port)
        # "": a CPU lease sees no GPU. In a sandbox only the leased GPUs exist, numbered from 0.
        env["CUDA_VISIBLE_DEVICES"] = self._runtime.cuda_visible_devices(lease.gpu_indices)
        env[procs.OWNER_ENV] = lease.tag
        if lease.purpose == protocol.GPU_CHECK_LEASE:
            env.update(self._check_env)
        command_env = dict(command_env or {})
        overrides = {name: command_env.pop(name, None) for name in _OVERRIDE_ENV}
        env.update(command_env)
        for name, sent in overrides.items():
            env[name] = _merge_json_object(name, sent, getattr(lease, _OVERRIDE_ENV[name]))
        return env


def _merge_json_object(name: str, sent: str | None, ours: Mapping) -> str:
    base: dict = {}
    if sent:
        try:
            base = json.loads(sent)
        except ValueError:
            raise lease_files.LeaseError(f"{name} in the command's env is not JSON; send a JSON object") from None
        if not isinstance(base, dict):
            raise lease_files.LeaseError(
                f"{name} in the command's env must be a JSON object, not {type(base).__name__}"
            )
    return json.dumps({**base, **ours}, sort_keys=True)
