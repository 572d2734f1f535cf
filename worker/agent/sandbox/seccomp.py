"""A bwrap lease's seccomp filter: seccomp_profile's list, compiled to the kernel's BPF by libseccomp (pyseccomp).

The agent builds the program once; each lease gets it on a memfd of its own that bwrap reads (`--seccomp FD`)
and installs just before it runs the lease's first process, so every process of the lease runs under it, and
no process of the lease can remove it (a seccomp filter is inherited and can only be narrowed).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from typing import Any

from worker.agent.sandbox import base, seccomp_profile

logger = logging.getLogger(__name__)

NEEDS = "libseccomp (Debian: libseccomp2) and the pyseccomp package (the [agent] extra)"


def _pyseccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: pyseccomp found no libseccomp.so
        raise base.SandboxError(f"cannot build the leases' seccomp filter ({exc}); it needs {NEEDS}") from None
    return pyseccomp


def _known(sc: Any, name: str) -> bool:
    """Whether this libseccomp knows the call (a negative number is a pseudo-call of another architecture)."""
    return sc.resolve_syscall(sc.Arch.NATIVE, name) != -1  # __NR_SCMP_ERROR


@functools.cache
def bpf(machine: str | None = None) -> bytes:
    """The filter's BPF program for this machine's architecture, as bwrap's --seccomp reads it."""
    sc = _pyseccomp()
    machine = machine or platform.machine()
    profile = seccomp_profile
    filt = sc.SyscallFilter(sc.ERRNO(profile.DENIED_ERRNO))
    allowed = [*profile.ALLOWED, *profile.ALLOWED_ON_ARCH.get(machine, ())]
    unknown = [name for name in allowed if not _known(sc, name)]
    for name in allowed:
        if name not in unknown:
            filt.add_rule(sc.ALLOW, name)
    flags_arg = 1 if machine.startswith("s390") else 0  # clone's flags come second on s390 only
    filt.add_rule(sc.ALLOW, "clone", sc.Arg(flags_arg, sc.MASKED_EQ, profile.CLONE_NAMESPACE_FLAGS, 0))
    filt.add_rule(sc.ERRNO(profile.CLONE3_ERRNO), "clone3")
    for value in profile.PERSONALITY_ALLOWED:
        filt.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, value))
    filt.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.NE, profile.AF_VSOCK))
    if unknown:
        logger.debug("seccomp: this libseccomp does not know %s: refused", ", ".join(unknown))
    fd = os.memfd_create("dcl-seccomp-build", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "rb", closefd=True) as reader:
            filt.export_bpf(reader)
            reader.seek(0)
            return reader.read()
    finally:
        os.close(fd)


def filter_fd(program: bytes) -> int:
    """A fresh memfd holding the program, at offset 0: one per lease (bwrap reads it to the end). Close-on-exec:
    only the lease's bwrap gets it (Popen's pass_fds), not whatever else the agent starts meanwhile."""
    fd = os.memfd_create("dcl-lease-seccomp", os.MFD_CLOEXEC)
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
