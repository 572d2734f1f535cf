"""The process inside every sandbox that starts a lease's commands: standard library only, JSON lines.

It runs as the sandbox's first process of the lease's user (bwrap: pid 2 of the sandbox's pid
namespace, docker: the container's entrypoint). The agent writes one request a line and reads one
reply or event a line, over one of two links:

- its stdin/stdout (docker): the end of stdin (the agent went away) ends the lease;
- a unix socket (bwrap, `--listen-fd N --lease-id ID --agent-uid UID`): the agent made and bound the
  listening socket in the lease's private dir (0700, the agent's, outside the sandbox's view) and
  passed it in. Each connection from the agent's uid (SO_PEERCRED; any other is closed unanswered)
  first gets {"event": "ready", "lease_id": ..., "next_id": ...} and replaces the one before: an
  agent that restarts reconnects, and the lease runs on. With no agent connected for
  `--orphan-s` seconds the lease ends itself (the agent is gone for good; the platform counted the
  lease lost long before).

    {"id": 1, "op": "spawn", "argv": [...], "env": {...}, "cwd": "...", "log": "..."}
        -> {"id": 1, "pid": 12}                          or {"id": 1, "error": "..."}
        later {"event": "exit", "id": 1, "returncode": 0}
    {"id": 2, "op": "kill", "target": 1, "signal": 15}   -> {"id": 2, "ok": true}
    {"id": 4, "op": "write", "path": "...", "content_b64": "..."} -> {"id": 4, "ok": true}
    {"id": 3, "op": "stop", "grace_s": 2.0, "first": ["raylet"], "last": ["gcs_server"]}
        -> {"id": 3, "ok": true, "signalled": 5}, then it exits

Stopping, the end of stdin (pipe link: the agent went away) and a socket link's orphan time signal
every other process of the sandbox: kill(-1) reaches exactly the processes of the lease's user in this pid namespace,
which is every process of the lease however it was forked. A stop first terminates them in
stages by executable name, in Ray's own order (`first`, then the rest, `last` at the end, the
names given by the agent), within the one grace: Ray's GCS and its autoscaler's monitor,
terminated at once, wait on each other until the SIGKILL. The names only order; kill(-1) then
reaches everything, and SIGKILL whatever is left at the end of the grace. All this only with
`--pid-namespace own` (the runtime's word that this runs alone in a pid namespace of its own) and not as
root: elsewhere kill(-1) would reach every process of the user, or of the machine, so a stop signals
nothing. Nothing here is trusted for
isolation: the sandbox around it does that; this only saves the agent a `docker exec` or an
`nsenter` per command. It makes itself non-dumpable so that the lease's processes, which run
as the same user, cannot take over its pipes through /proc.
"""

import base64
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

_out_lock = threading.Lock()
_children = {}  # request id -> Popen
# Where replies and events go (None: no agent connected), its connection, the highest request id seen.
_link = {"out": None, "conn": None, "top_id": 0}


def _send(message):
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with _out_lock:
        out = _link["out"]
        if out is None:
            return  # no agent now: an exit it was not there to see is of no use to the next one
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            _link["out"] = None


def _no_dump():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def _processes():
    """{pid: executable name} of this pid namespace's live processes other than init (1) and this one."""
    me = os.getpid()
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    head, _, rest = f.read().rpartition(b")")
            except OSError:
                continue
            if rest.split()[:1] != [b"Z"]:
                found[int(name)] = head.partition(b"(")[2].decode(errors="replace")
    return found


# Set by `--pid-namespace own`, which only a runtime that starts this in a pid namespace of its own passes
# (bwrap, docker). Without it (say, run by hand or by a test on the host) a stop signals nothing: kill(-1) and a
# scan of /proc on the host would reach every process of the user, or, as root, of the machine.
_alone = {"namespace": False}


def may_signal_everything():
    """Only in a pid namespace of the lease's own, and never as root (a lease never runs as root)."""
    return _alone["namespace"] and os.getuid() != 0


class PidNamespace:
    """What a stop does to this pid namespace: list its processes, signal them, wait (a test gives a fake one)."""

    processes = staticmethod(_processes)
    kill = staticmethod(os.kill)
    sleep = staticmethod(time.sleep)
    monotonic = staticmethod(time.monotonic)


def _signal_all(ns, sig):
    try:
        ns.kill(-1, sig)  # every process this user may signal here, never this one
        return True
    except ProcessLookupError:
        return False


def _terminate_stage(ns, pids, until):
    """SIGTERM pids, then wait until they are gone or `until` (monotonic) has come."""
    for pid in pids:
        try:
            ns.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    while ns.monotonic() < until and set(pids) & set(ns.processes()):
        ns.sleep(0.02)


def stop_everything(grace_s, first=(), last=(), ns=PidNamespace):
    """SIGTERM every other process (the processes named in `first`, then all but those in `last`, each
    stage waited for, then everything), wait up to grace_s in all for them to go, then SIGKILL what is left."""
    if ns is PidNamespace and not may_signal_everything():
        sys.stderr.write("supervisor: not alone in a pid namespace of its own, or root: nothing signalled\n")
        return 0
    deadline = ns.monotonic() + grace_s
    found = ns.processes()
    signalled = len(found)
    first, last = set(first), set(last)
    if first or last:
        stage_s = grace_s / 3  # whatever the first two stages leave, the last one keeps at least this
        _terminate_stage(ns, [p for p, name in found.items() if name in first], ns.monotonic() + stage_s)
        _terminate_stage(ns, [p for p, name in ns.processes().items() if name not in last], ns.monotonic() + stage_s)
    _signal_all(ns, signal.SIGTERM)
    while ns.processes() and ns.monotonic() < deadline:
        ns.sleep(0.02)
    _signal_all(ns, signal.SIGKILL)
    deadline = ns.monotonic() + 5.0
    while ns.processes() and ns.monotonic() < deadline:
        ns.sleep(0.02)
    return signalled


def _wait(request_id, proc):
    returncode = proc.wait()
    _children.pop(request_id, None)
    _send({"event": "exit", "id": request_id, "returncode": returncode})


def _spawn(request):
    log_path = request["log"]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    # The agent made the log; never write through a link put in its place (opened as the lease's own user anyway).
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "ab", buffering=0) as log:
        proc = subprocess.Popen(
            request["argv"],
            env=request["env"],
            cwd=request.get("cwd") or None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[request["id"]] = proc
    threading.Thread(target=_wait, args=(request["id"], proc), daemon=True).start()
    return {"pid": proc.pid}


def _write(request):
    """Write a file of the launcher's (mode 0600) as the lease's user: atomically, never through a link."""
    path = request["path"]
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(request["content_b64"]))
    os.replace(tmp, path)
    return {"ok": True}


def _kill(request):
    proc = _children.get(request["target"])
    if proc is None:
        return {"ok": False}
    try:
        os.killpg(proc.pid, int(request.get("signal", signal.SIGTERM)))
    except ProcessLookupError:
        return {"ok": False}
    return {"ok": True}


def _serve(lines):
    """Answer the requests read from lines; True once a stop ended the lease."""
    for line in lines:
        request = None
        try:
            request = json.loads(line)
            if isinstance(request.get("id"), int):
                _link["top_id"] = max(_link["top_id"], request["id"])
            op = request["op"]
            if op == "spawn":
                reply = _spawn(request)
            elif op == "write":
                reply = _write(request)
            elif op == "kill":
                reply = _kill(request)
            elif op == "stop":
                signalled = stop_everything(
                    float(request.get("grace_s", 2.0)), request.get("first") or (), request.get("last") or ()
                )
                reply = {"ok": True, "signalled": signalled}
                _send({"id": request.get("id"), **reply})
                return True
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _send({"id": request.get("id") if isinstance(request, dict) else None, **reply})
    return False


def _ready(**extra):
    return {"event": "ready", "pid": os.getpid(), "uid": os.getuid(), "python": sys.version.split()[0], **extra}


def peer_uid(conn):
    """The uid of the process at the other end of a unix socket connection (SO_PEERCRED)."""
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _serve_connection(conn, done):
    with conn, conn.makefile("rb") as lines:
        if _serve(lines):
            done.set()


def serve_socket(listener, lease_id, agent_uid, orphan_s):
    """Accept the agent's connections one after another until a stop, or until no agent came for orphan_s."""
    done = threading.Event()
    current = None
    alone_since = time.monotonic()
    listener.settimeout(1.0)
    while not done.is_set():
        if current is not None and not current.is_alive():
            current, alone_since = None, time.monotonic()
        if current is None and time.monotonic() - alone_since > orphan_s:
            stop_everything(2.0)
            return
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        if peer_uid(conn) != agent_uid:
            conn.close()  # another user, or a lease's own: never an answer
            continue
        with _out_lock:
            old, _link["conn"], _link["out"] = _link["conn"], conn, conn.makefile("wb")
        if old is not None:  # the agent came back: its old connection (if it lingers) reads no more
            try:
                old.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _send(_ready(lease_id=lease_id, next_id=_link["top_id"] + 1))
        current = threading.Thread(target=_serve_connection, args=(conn, done), daemon=True)
        current.start()


def _options(argv):
    options = {}
    for name, value in zip(argv[::2], argv[1::2], strict=False):
        options[name.lstrip("-").replace("-", "_")] = value
    return options


def main(argv=None):
    _no_dump()
    # Only the agent ends us (a stop, closing stdin, or its long absence). A handler, not SIG_IGN: an ignored
    # signal stays ignored across exec, and every command would then ignore SIGTERM too.
    signal.signal(signal.SIGTERM, lambda *_: None)
    options = _options(sys.argv[1:] if argv is None else argv)
    _alone["namespace"] = options.get("pid_namespace") == "own"
    if "listen_fd" in options:
        listener = socket.socket(fileno=int(options["listen_fd"]))
        os.set_inheritable(listener.fileno(), False)  # no command of the lease gets it
        serve_socket(listener, options["lease_id"], int(options["agent_uid"]), float(options["orphan_s"]))
        return 0
    _link["out"] = sys.stdout.buffer
    _send(_ready())
    if not _serve(sys.stdin.buffer):
        stop_everything(0.5)  # stdin closed: the agent is gone, and so is the lease
    return 0


if __name__ == "__main__":
    sys.exit(main())
