"""An agent that is not root: bwrap makes the lease's user namespace itself, `--disable-userns` keeps another out
of it, and the seccomp filter still applies. The lease's real command line (bwrap.bwrap_args with as_root=False)
runs as an unprivileged user; each layer is tried on its own too."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration import sandboxes
from worker.agent.sandbox import base, bwrap, bwrap_version, gpu_devices, seccomp

pytestmark = sandboxes.NEEDS_ROOT_AND_BWRAP  # root, only to become the unprivileged user below
NOBODY = 65534
PROBE = Path(__file__).resolve().parents[1] / "kernel_probe.py"


def _probe_in_lease(home: Path, argv: list[str], pass_fds: tuple[int, ...]) -> dict:
    done = subprocess.run(
        [*bwrap.drop_privileges(NOBODY, NOBODY), *argv, "--", "/usr/bin/python3", str(home / "kernel_probe.py"), "{}"],
        capture_output=True,
        text=True,
        timeout=120,
        pass_fds=pass_fds,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _without(argv: list[str], flag: str, takes_value: bool) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + (2 if takes_value else 1) :]


def test_an_unprivileged_agents_lease_cannot_make_a_user_namespace():
    if bwrap_version.version_problem(bwrap_version.installed(), as_root=False):
        pytest.skip("this bubblewrap is older than 0.8.0: the agent refuses to run leases without root (unit-tested)")
    root = Path(f"/tmp/dcl-nr-{secrets.token_hex(4)}")
    home = root / "home"
    home.mkdir(parents=True)
    shutil.copy(PROBE, home / "kernel_probe.py")
    os.chown(home, NOBODY, NOBODY)
    root.chmod(0o755)
    spec = base.SandboxSpec(lease_id="l-0123456789ab", owner_tag="dcl-test", uid=None, gid=None, writable=(home,))
    fd = seccomp.filter_fd(seccomp.bpf())
    try:
        argv = bwrap.bwrap_args(
            spec,
            runtime_dirs=[],
            devices=gpu_devices.GpuDevices((), (), ()),
            hostname="box",
            as_root=False,
            seccomp_fd=fd,
        )
        both = _probe_in_lease(home, argv, (fd,))
        userns_off_only = _probe_in_lease(home, _without(argv, "--seccomp", True), ())
        control = _probe_in_lease(home, _without(_without(argv, "--seccomp", True), "--disable-userns", False), ())
    finally:
        os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
    assert both["seccomp"] == "2" and both["unshare_user"] == both["unshare_user_command"] == "EPERM", both
    # --disable-userns alone: the lease's user namespace allows no other (ENOSPC: its limit of namespaces is 0).
    assert userns_off_only["seccomp"] == "0" and userns_off_only["unshare_user"] == "ENOSPC", userns_off_only
    assert "No space left on device" in userns_off_only["unshare_user_command"], userns_off_only
    # Neither: the same lease could make one (bwrap made its own, so this host allows them).
    assert control["unshare_user"] == control["unshare_user_command"] == "ok", control
