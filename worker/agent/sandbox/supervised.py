"""The agent's side of supervisor.py: a sandbox whose first process is the supervisor, spoken to over its
stdin/stdout (one JSON object a line each way); the docker and bwrap runtimes build on it."""

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
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker import procs
from worker.agent.sandbox import base

logger = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("supervisor.py")
READY_TIMEOUT_S = 60.0
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

    The sandbox's first process is started and read by a thread of its own that lives exactly as
    long as the sandbox: bwrap's --die-with-parent ties the sandbox to the thread that forked it,
    so it must not be the short-lived thread that handled the lease's open.
    """

    def __init__(
        self,
        lease_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        pass_fds: Sequence[int] = (),
    ):
        self.lease_id = lease_id
        self._argv = list(argv)
        self._env = dict(env)
        self._log_path = Path(log_path)
        self._pass_fds = tuple(pass_fds)
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
        deadline = time.monotonic() + timeout_s
        while not self.ready and not self._gone.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.ready:
            self._force_end()
            raise base.SandboxError(f"the sandbox of lease {self.lease_id} did not start: {self.output_tail()}")
        return self

    # --- the sandbox's thread ------------------------------------------------------------

    def _main(self) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._log_path, "ab", buffering=0) as log:
                self.proc = subprocess.Popen(
                    self._argv,
                    env=self._env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    pass_fds=self._pass_fds,
                    start_new_session=True,
                )
        except OSError as exc:
            self._start_error = exc
            self._started.set()
            self._gone.set()
            return
        finally:
            self._started.set()
        try:
            for line in self.proc.stdout:
                self._dispatch(line)
        finally:
            self.proc.wait()
            self._gone.set()
            with self._lock:
                for pending in self._pending.values():
                    pending.event.set()
                for process in self._processes.values():
                    if not process.exited.is_set():
                        process.returncode = -signal.SIGKILL
                        process.exited.set()
            logger.debug("sandbox of %s ended with %s", self.lease_id, self.proc.returncode)

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
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
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
            if self.proc is not None and self.proc.stdin:
                self.proc.stdin.close()
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
        """End the sandbox from outside (the supervisor did not): runtime-specific."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _remaining(self) -> list[int]:
        """Host PIDs of the sandbox still alive after close (should be none): runtime-specific."""
        return []

    def output_tail(self, limit: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-limit:].decode(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no output)"
