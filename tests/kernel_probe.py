"""Tries the kernel calls a lease must not make, and prints {attempt: "ok" | errno name} as one JSON line.

Standard library only: it runs inside leases (copied into the lease's home), outside them as a control, and
under the lease's seccomp program alone (`--filter FILE`: loaded with prctl before anything is tried).
argv[-1] is a JSON object: `ptrace_pid` (a process to attach to), `mount_dir` (where to mount a tmpfs; the
mount attempts are left out without it). x86_64 and aarch64 only (the raw call numbers below).
"""

import ctypes
import errno
import json
import os
import platform
import signal
import subprocess
import sys
import threading

NUMBERS = {  # calls without a C library wrapper
    "x86_64": {"add_key": 248, "keyctl": 250, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "clone3": 435},
    "aarch64": {"add_key": 217, "keyctl": 219, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "clone3": 435},
}[platform.machine()]
CLONE_NEWUSER, PTRACE_ATTACH, PTRACE_DETACH = 0x10000000, 16, 17
KEY_SPEC_SESSION_KEYRING = -3
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def named(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def call(result: int) -> str:
    return "ok" if result >= 0 else named(ctypes.get_errno())


def command(argv: list[str]) -> str:
    """ "ok", or the denial the command reported ("EPERM" for "Operation not permitted"), or its exit and text."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return "ok"
    text = done.stderr.strip()
    if "Operation not permitted" in text or "must be superuser" in text or "permission denied" in text.lower():
        return "EPERM"
    return f"exit {done.returncode}: {text[-200:]}"


def load_filter(path: str) -> None:
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = open(path, "rb").read()
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = Fprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "cannot load the filter")


def ptrace_attach(pid: int) -> str:
    """PTRACE_ATTACH, then wait for the stop and detach (a tracer may wait for its tracee: __WALL)."""
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        return named(ctypes.get_errno())
    os.waitpid(pid, 0x40000000)
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return "ok"


def ptrace_own_child() -> str:
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        return ptrace_attach(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def in_child(fn) -> str:
    """fn's answer from a forked child: what it changes (a new user namespace) must not change later attempts."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, fn().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        return answer.read()


def status_field(name: str) -> str:
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return "absent"


def main() -> None:
    if "--filter" in sys.argv:
        load_filter(sys.argv[sys.argv.index("--filter") + 1])
    targets = json.loads(sys.argv[-1])
    out = {"seccomp": status_field("Seccomp")}
    out["unshare_user"] = in_child(lambda: call(libc.unshare(CLONE_NEWUSER)))
    out["unshare_user_command"] = command(["unshare", "-U", "-r", "true"])
    out["keyctl"] = call(libc.syscall(NUMBERS["keyctl"], 0, KEY_SPEC_SESSION_KEYRING, 1))  # GET_KEYRING_ID, create
    out["add_key"] = call(libc.syscall(NUMBERS["add_key"], b"user", b"dcl-probe", b"x", 1, KEY_SPEC_SESSION_KEYRING))
    out["bpf"] = call(libc.syscall(NUMBERS["bpf"], 0, None, 0))  # BPF_MAP_CREATE without attributes
    out["userfaultfd"] = call(libc.syscall(NUMBERS["userfaultfd"], 0))
    out["clone3"] = call(libc.syscall(NUMBERS["clone3"], None, 0))
    if "mount_dir" in targets:
        out["mount_tmpfs"] = command(["mount", "-t", "tmpfs", "none", targets["mount_dir"]])
        out["mount_syscall"] = call(libc.mount(b"none", targets["mount_dir"].encode(), b"tmpfs", 0, None))
        out["mount_in_user_namespace"] = command(["unshare", "-U", "-r", "-m", "mount", "-t", "tmpfs", "none", "/mnt"])
    if "ptrace_pid" in targets:
        out["ptrace_outside"] = ptrace_attach(int(targets["ptrace_pid"]))
    out["ptrace_own_child"] = ptrace_own_child()
    # What a lease must still do: threads, fork, sockets.
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    out["thread_and_fork"] = command([sys.executable, "-c", "import os; os.wait() if os.fork() else os._exit(0)"])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
