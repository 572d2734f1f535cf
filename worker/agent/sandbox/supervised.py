"""The agent's side of supervisor.py: a sandbox whose first process is the supervisor, spoken to in JSON lines
over its stdin/stdout (docker) or over a unix socket in the lease's private dir (bwrap: control_socket.py).
A socket-linked sandbox outlives the agent: a restarted agent attaches to it again (`attach`)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from worker import procs
from worker.agent.sandbox import base, control_socket

logger = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("supervisor.py")
READY_TIMEOUT_S = 60.0
ATTACH_TIMEOUT_S = 15.0
# Told to the supervisor by a runtime that starts it in a pid namespace of its own: only then may a stop signal
# every process it sees (supervisor.may_signal_everything).
OWN_PID_NAMESPACE = ["--pid-namespace", "own"]
ORPHAN_S = 300.0  # a socket-linked lease ends itself when no agent came back for this long
_KILLED_EXIT = 137  # what a shell reports for a process ended by SIGKILL


class _Pending:
    def __init__(self):
        self.event = threading.Event()
        self.reply: dict | None = None


class SupervisedProcess:
    """A command the supervisor started; its exit arrives as an event on the sandbox's stdout."""

    def __init__(self, sandbox: SupervisedSandbox, request_id: int, pid: int):
        self._sandbox = sandbox
        self.request_id = request_id
        self.pid = pid  # inside the sandbox's pid namespace
        self.returncode: int | None = None
        self.exited = threading.Event()

    def wait(self, timeout: float | None = None) -> int:
        if not self.exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"sandboxed pid {self.pid}", timeout)
        return self.returncode  # type: ignore[return-value]

    def kill(self, grace_s: float) -> None:
        self._sandbox.request({"op": "kill", "target": self.request_id, "signal": int(signal.SIGTERM)}, 5.0)
        if not self.exited.wait(grace_s):
            self._sandbox.request({"op": "kill", "target": self.request_id, "signal": int(signal.SIGKILL)}, 5.0)
            self.exited.wait(5.0)


class SupervisedSandbox(base.Sandbox):
    """Starts `argv` (which must end up running supervisor.py inside the sandbox) and speaks its protocol.

    socket_dir None: over the supervisor's stdin/stdout; the sandbox ends with the agent. Else over a
    unix socket there (the agent's 0700 dir): the sandbox's first process is started in a session of its
    own, and the sandbox lives on when the agent goes; `attach` reaches it again. Its replies are read
    by a thread of its own that lives exactly as long as the link.
    """

    def __init__(
        self,
        lease_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        pass_fds: Sequence[int] = (),
        socket_dir: Path | None = None,
        keeper: tuple[int, float] | None = None,
    ):
        self.lease_id = lease_id
        self._argv = list(argv)
        self._env = dict(env)
        self._log_path = Path(log_path)
        self._pass_fds = tuple(pass_fds)
        self._socket_dir = socket_dir
        self.keeper = keeper  # (pid, start time) of the sandbox's first host process, kept for force_end
        self._writer: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._processes: dict[int, SupervisedProcess] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._started = threading.Event()
        self._gone = threading.Event()
        self._start_error: BaseException | None = None
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=f"dcluster-sandbox-{lease_id}", daemon=True)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> SupervisedSandbox:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise base.SandboxError(f"cannot start the sandbox of {self.lease_id}: {self._start_error}")
        if not self._wait_ready(timeout_s):
            self._force_end()
            raise base.SandboxError(f"the sandbox of lease {self.lease_id} did not start: {self.output_tail()}")
        if self.proc is not None and self._socket_dir is not None:
            try:
                self.keeper = (self.proc.pid, psutil.Process(self.proc.pid).create_time())
            except psutil.Error:
                self.keeper = (self.proc.pid, 0.0)
        return self

    def attach(self, timeout_s: float = ATTACH_TIMEOUT_S) -> SupervisedSandbox:
        """Reach the supervisor of a sandbox an earlier run of the agent started; SandboxError when none
        answers there, or one answers for another lease."""
        if self._socket_dir is None:
            raise base.SandboxError(f"the sandbox of lease {self.lease_id} is linked by pipes: nothing to attach to")
        try:
            conn = control_socket.connect(self._socket_dir, timeout_s)
        except OSError as exc:
            raise base.SandboxError(f"no supervisor answers for lease {self.lease_id} ({exc})") from None
        self._writer = conn.makefile("wb")
        self._thread = threading.Thread(
            target=self._read, args=(conn.makefile("rb"), conn), name=f"dcluster-sandbox-{self.lease_id}", daemon=True
        )
        self._thread.start()
        if not self._wait_ready(timeout_s) or self.ready.get("lease_id") != self.lease_id:
            found = self.ready.get("lease_id")
            conn.close()
            raise base.SandboxError(
                f"the supervisor at {self._socket_dir} answers for {found}, not {self.lease_id}"
                if found
                else f"the supervisor of lease {self.lease_id} did not answer"
            )
        return self

    def saved(self) -> dict[str, Any]:
        if self._socket_dir is None:
            return {}
        pid, started = self.keeper or (None, None)
        return {"link": "socket", "keeper_pid": pid, "keeper_started": started}

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready and not self._gone.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(self.ready)

    # --- the sandbox's thread ------------------------------------------------------------

    def _main(self) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        conn = None
        try:
            with open(self._log_path, "ab", buffering=0) as log:
                if self._socket_dir is None:
                    self.proc = subprocess.Popen(
                        self._argv,
                        env=self._env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        pass_fds=self._pass_fds,
                        start_new_session=True,
                    )
                    reader, self._writer = self.proc.stdout, self.proc.stdin
                else:
                    with control_socket.listen(self._socket_dir) as listener:
                        fd = listener.fileno()
                        link = ["--listen-fd", str(fd), "--lease-id", self.lease_id]
                        link += ["--agent-uid", str(os.getuid()), "--orphan-s", f"{ORPHAN_S:g}"]
                        self.proc = subprocess.Popen(
                            [*self._argv, *link],
                            env=self._env,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=log,
                            pass_fds=(*self._pass_fds, fd),
                            start_new_session=True,
                        )
                    conn = control_socket.connect(self._socket_dir)
                    reader, self._writer = conn.makefile("rb"), conn.makefile("wb")
        except OSError as exc:
            self._start_error = exc
            self._started.set()
            self._gone.set()
            return
        finally:
            self._started.set()
        self._read(reader, conn)

    def _read(self, reader: Iterable[bytes], conn: Any = None) -> None:
        try:
            for line in reader:
                self._dispatch(line)
        finally:
            if conn is not None:
                conn.close()
            if self.proc is not None:
                self.proc.wait()
            self._gone.set()
            with self._lock:
                for pending in self._pending.values():
                    pending.event.set()
                for process in self._processes.values():
                    if not process.exited.is_set():
                        process.returncode = -signal.SIGKILL
                        process.exited.set()
            logger.debug("sandbox of %s ended with %s", self.lease_id, self.proc.returncode if self.proc else "?")

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            logger.warning("sandbox of %s: unreadable line from its supervisor: %.200r", self.lease_id, line)
            return
        event = message.get("event")
        with self._lock:
            if event == "ready":
                if isinstance(message.get("next_id"), int):  # a reattached agent: ids go on from the last one
                    self._ids = itertools.count(message["next_id"])
                self.ready = message
            elif event == "exit":
                process = self._processes.pop(message.get("id"), None)
                if process is not None:
                    process.returncode = int(message.get("returncode", _KILLED_EXIT))
                    process.exited.set()
            else:
                pending = self._pending.pop(message.get("id"), None)
                if pending is not None:
                    pending.reply = message
                    pending.event.set()

    # --- requests ------------------------------------------------------------------------

    def request(self, body: dict, timeout_s: float, process: SupervisedProcess | None = None) -> dict:
        """Send one request and wait for its reply; a process given is registered under the same id first
        (the supervisor answers a spawn before its waiter can report the exit, but the id must be known)."""
        if self._gone.is_set():
            raise base.SandboxError(f"the sandbox of lease {self.lease_id} has ended: {self.output_tail()}")
        pending = _Pending()
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = pending
            if process is not None:
                process.request_id = request_id
                self._processes[request_id] = process
        line = (json.dumps({**body, "id": request_id}, separators=(",", ":")) + "\n").encode()
        try:
            with self._write_lock:
                self._writer.write(line)
                self._writer.flush()
        except (BrokenPipeError, ValueError, OSError, AttributeError) as exc:
            raise base.SandboxError(f"the sandbox of lease {self.lease_id} is gone ({exc})") from None
        if not pending.event.wait(timeout_s) or pending.reply is None:
            with self._lock:
                self._pending.pop(request_id, None)
            raise base.SandboxError(
                f"the sandbox of lease {self.lease_id} did not answer {body['op']} within "
                f"{timeout_s:g} s: {self.output_tail()}"
            )
        if "error" in pending.reply:
            with self._lock:
                self._processes.pop(request_id, None)
            raise base.SandboxError(
                f"lease {self.lease_id}: {body['op']} failed in the sandbox: {pending.reply['error']}"
            )
        return pending.reply

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> base.Process:
        process = SupervisedProcess(self, -1, -1)
        reply = self.request(
            {"op": "spawn", "argv": list(argv), "env": dict(env), "cwd": str(cwd), "log": str(log_path)},
            30.0,
            process=process,
        )
        process.pid = int(reply["pid"])
        return process

    def put_file(self, path: Path, content: bytes) -> None:
        self.request({"op": "write", "path": str(path), "content_b64": base64.b64encode(content).decode()}, 30.0)

    # --- ending --------------------------------------------------------------------------

    def alive(self) -> bool:
        return bool(self.ready) and not self._gone.is_set()

    def close(self, grace_s: float) -> procs.StopSummary:
        started = time.monotonic()
        signalled = 0
        if not self._gone.is_set():
            try:
                stop = {
                    "op": "stop",
                    "grace_s": grace_s,
                    "first": sorted(procs.STOP_FIRST),
                    "last": sorted(procs.STOP_LAST),
                }
                signalled = int(self.request(stop, grace_s + 15.0).get("signalled", 0))
            except base.SandboxError as exc:
                logger.warning("%s; ending the sandbox from outside", exc)
        try:
            if self._writer is not None:
                self._writer.close()  # pipes: the end of stdin ends the sandbox; a socket: the stop did
        except OSError:
            pass
        if not self._gone.wait(10.0):
            self._force_end()
            self._gone.wait(10.0)
        remaining = self._remaining()
        if remaining:
            self._force_end()
            remaining = self._remaining()
        self._closed = True
        return procs.StopSummary(
            owner_tag=self.lease_id,
            terminated=list(range(signalled)),
            killed=[],
            remaining=remaining,
            rounds=1,
            elapsed_s=round(time.monotonic() - started, 2),
        )

    def _force_end(self) -> None:
        """End the sandbox from outside (the supervisor did not): its first process's group; runtimes add more."""
        if self.proc is not None:
            alive = self.proc.poll() is None
            pgid = self.proc.pid
        else:  # attached: the keeper is not our child; its pid counts only if it started when it was recorded
            pid, started = self.keeper or (None, None)
            alive = pid is not None and procs.pid_alive(pid, started)
            pgid = pid or 0
        if alive:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _remaining(self) -> list[int]:
        """Host PIDs of the sandbox still alive after close (should be none): runtime-specific."""
        return []

    def output_tail(self, limit: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-limit:].decode(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no output)"
