"""What a machine's bubblewrap must offer to keep user namespaces and the seccomp-refused calls out of a lease.

Read by the bwrap runtime (it refuses to start leases otherwise) and by `dcluster-agent doctor`.
"""

from __future__ import annotations

import re
import subprocess

from worker.agent.sandbox import base, seccomp

# --disable-userns came with bubblewrap 0.8.0; it is needed where bwrap makes the lease's user namespace (no root).
MIN_VERSION_WITHOUT_ROOT = (0, 8, 0)


def parse_version(text: str) -> tuple[int, ...] | None:
    """(0, 8, 0) from `bwrap --version`'s "bubblewrap 0.8.0"; None when it names no version."""
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part or 0) for part in found.groups()) if found else None


def installed() -> tuple[int, ...] | None:
    try:
        done = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(done.stdout + done.stderr)


def version_problem(version: tuple[int, ...] | None, *, as_root: bool) -> str | None:
    """Why this bwrap cannot keep user namespaces out of a lease, or None when it can."""
    if as_root:  # root: no user namespace of bwrap's; the seccomp filter refuses new ones
        return None
    need = ".".join(map(str, MIN_VERSION_WITHOUT_ROOT))
    if version is None or version < MIN_VERSION_WITHOUT_ROOT:
        seen = ".".join(map(str, version)) if version else "of an unknown version"
        return (
            f"bubblewrap {seen} is too old: an agent that is not root needs bubblewrap {need} or newer "
            "(--disable-userns keeps leases from making user namespaces); upgrade it, or run the agent as root"
        )
    return None


def kernel_surface_problem(*, as_root: bool) -> str | None:
    """Why leases here would not get their seccomp filter or would keep user namespaces; None when they are safe."""
    problem = version_problem(installed(), as_root=as_root)
    if problem:
        return problem
    try:
        seccomp.bpf()
    except base.SandboxError as exc:
        return str(exc)
    return None
