"""Every lease in a sandbox: the runtimes (docker, bwrap, none) behind one interface (worker.agent.sandbox.base)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dcl_core import domain


def docker_answers(timeout_s: float = 15.0) -> bool:
    """True when a docker daemon answers `docker info` (the default runtime then)."""
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info", "--format", "{{.ServerVersion}}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout_s,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def default_runtime() -> str:
    return "docker" if docker_answers() else "bwrap"


def make_runtime(name: str, *, gpu_dev_root: Path = Path("/dev"), docker_image: str | None = None):
    """The runtime object for `--runtime name`; raises base.SandboxError when it cannot work here."""
    from worker.agent.sandbox import base

    if name == domain.UNSANDBOXED:
        from worker.agent.sandbox import unsandboxed

        return unsandboxed.UnsandboxedRuntime()
    if name == "bwrap":
        from worker.agent.sandbox import bwrap

        return bwrap.BwrapRuntime(gpu_dev_root=gpu_dev_root)
    if name == "docker":
        from worker.agent.sandbox import docker

        return docker.DockerRuntime(image=docker_image, gpu_dev_root=gpu_dev_root)
    raise base.SandboxError(f"unknown runtime {name!r}; pick one of {', '.join(domain.SANDBOX_RUNTIMES)}")
