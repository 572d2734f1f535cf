"""The leases' seccomp program on its own: loaded into a real process by tests/kernel_probe.py, which then tries
each refused call. The same probe without it is the control: what it reaches, the filter alone took away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.agent.sandbox import seccomp, seccomp_profile

PROBE = Path(__file__).resolve().parents[3] / "kernel_probe.py"
# Docker's default profile refuses these to a process without capabilities (ptrace: we refuse it too).
MUST_BE_REFUSED = set(
    """keyctl add_key request_key mount umount2 pivot_root unshare setns ptrace process_vm_readv process_vm_writev
    bpf perf_event_open kexec_load kexec_file_load init_module finit_module delete_module open_by_handle_at
    userfaultfd swapon swapoff reboot settimeofday clock_settime acct quotactl lookup_dcookie chroot syslog
    io_uring_setup fsopen fsmount move_mount open_tree iopl ioperm""".split()
)


def _probe(tmp_path: Path, *, filtered: bool) -> dict:
    sleeper = subprocess.Popen(["sleep", "120"])  # a process the probe did not start: ptrace's target
    args = [sys.executable, str(PROBE)]
    if filtered:
        program = tmp_path / "lease.bpf"
        program.write_bytes(seccomp.bpf())
        args += ["--filter", str(program)]
    try:
        done = subprocess.run(
            [*args, json.dumps({"ptrace_pid": sleeper.pid})], capture_output=True, text=True, timeout=120
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_profile_refuses_what_dockers_default_refuses_and_more():
    assert not MUST_BE_REFUSED & set(seccomp_profile.ALLOWED)
    assert not set(seccomp_profile.DENIED_BEYOND_DOCKER) & set(seccomp_profile.ALLOWED)
    # clone is allowed only without namespace flags, CLONE_NEWUSER among them
    assert seccomp_profile.CLONE_NAMESPACE_FLAGS & seccomp_profile.CLONE_NEWUSER
    assert len(seccomp.bpf()) % 8 == 0 and len(seccomp.bpf()) > 8 * 300  # a BPF program: 8-byte instructions


def test_the_filter_alone_refuses_user_namespaces_keys_ptrace_and_more(tmp_path):
    control = _probe(tmp_path, filtered=False)
    got = _probe(tmp_path, filtered=True)
    assert got["seccomp"] == "2" and control["seccomp"] in ("0", "2")  # 2: SECCOMP_MODE_FILTER
    for attempt in ("unshare_user", "unshare_user_command", "keyctl", "add_key", "bpf", "userfaultfd"):
        assert got[attempt] == "EPERM", (attempt, got)
    assert got["ptrace_outside"] == got["ptrace_own_child"] == "EPERM", got
    assert got["clone3"] == "ENOSYS", got  # as Docker: the C library falls back to clone, which is checked
    assert got["thread_and_fork"] == "ok"  # what every program needs still works
    # The control reached the kernel each time: allowed, or refused by the kernel for its own reasons (bpf and
    # clone3 called with no arguments are EINVAL; a host may forbid unprivileged user namespaces or userfaultfd).
    assert control["keyctl"] == control["add_key"] == control["ptrace_own_child"] == "ok", control
    assert control["bpf"] == control["clone3"] == "EINVAL", control
