"""Running a lease's commands and writing its files, in its sandbox (`ray stop` intercepted, `ray start` once)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from dcl_core import commands, protocol
from worker import procs
from worker.agent import cpu_caps as cpu_caps_mod
from worker.agent import lease_env, lease_files, lease_fs, start_once
from worker.agent.sandbox import base as sandbox

logger = logging.getLogger(__name__)


class LeaseCommands:
    """Runs commands in, and writes files into, open leases; LeaseRunner (leases.py) opens and closes them."""

    def __init__(
        self,
        *,
        lookup: Callable[[str], lease_files.Lease],
        environment: lease_env.LeaseEnvironment,
        runtime: sandbox.Runtime,
        cpu_caps: cpu_caps_mod.CpuCaps,
        starts: start_once.StartOnce,
        runner_closed: Callable[[], bool],
    ):
        self._get = lookup
        self._environment = environment
        self._runtime = runtime
        self._cpu_caps = cpu_caps
        self._starts = starts
        self._runner_closed = runner_closed

    def run(
        self, lease_id: str, cmd: str, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
    ) -> protocol.WorkResult:
        """Run `bash -c cmd` in the lease's sandbox; unsandboxed, `ray stop` stops this lease's processes instead.

        In a sandbox `ray stop` runs as it is: it sees only the lease's own pid namespace. A `ray start`
        delivered twice runs once (start_once.py).
        """
        lease = self._get(lease_id)
        if commands.stops_ray(cmd):
            self._starts.forget(lease_id)
        elif commands.starts_ray(cmd):
            return self._starts.run(
                lease_id,
                start_once.start_key(cmd, env),
                lambda: self._run(lease, cmd, env, timeout_s),
                lambda: start_once.raylet_answers(lease.node_ip, lease.ports.node_manager),
                timeout_s,
            )
        return self._run(lease, cmd, env, timeout_s)

    def _run(
        self, lease: lease_files.Lease, cmd: str, env: Mapping[str, str] | None, timeout_s: float
    ) -> protocol.WorkResult:
        lease_id = lease.lease_id
        note = ""
        data: dict = {}
        if not self._runtime.sandboxed and commands.stops_ray(cmd):
            # Stop first, then run what is left with every `ray stop` replaced by the no-op `:`
            # (its arguments become arguments of `:`), so `ray stop; ray start ...` still starts.
            summary = procs.stop_owned(lease.tag, grace_s=2.0)
            logger.info(
                "lease %s: `ray stop` intercepted; stopped %d process(es) (%d killed) in %.1f s",
                lease_id,
                len(summary.terminated),
                len(summary.killed),
                summary.elapsed_s,
            )
            note = (
                f"[dcluster-agent] `ray stop` intercepted: stopped {len(summary.terminated)} process(es) of "
                f"lease {lease_id} ({len(summary.killed)} needed SIGKILL) in {summary.elapsed_s:.1f} s; "
                "other Ray clusters on this machine were not touched\n"
            )
            data = {"ray_stop": stop_data(summary)}
            if not summary.clean:
                return protocol.WorkResult(
                    ok=False,
                    exit_code=1,
                    data=data,
                    output=note + (f"[dcluster-agent] still alive after the stop: {summary.remaining}\n"),
                )
            cmd = commands.RAY_STOP_RE.sub(":", cmd)
        full_env = self._environment.of(lease, env)
        started = time.monotonic()
        with lease.lock:  # close() sets `closing` under this lock: no command starts after its sweep
            if self._runner_closed() or lease.closing:
                raise lease_files.RunnerClosed(
                    f"lease {lease_id} is closing; the command was not run", lease_id=lease_id
                )
            lease.seq += 1
            log = _CommandLog(lease, f"{lease.seq:04d}-run.log")
            try:
                log.create()
                proc = lease.sandbox.spawn(["bash", "-c", cmd], env=full_env, cwd=lease.home, log_path=log.path)
            except (sandbox.SandboxError, lease_fs.Refused) as exc:
                log.close()
                return protocol.WorkResult(
                    ok=False, exit_code=1, output=_last(note + f"[dcluster-agent] {exc}; the command was not run\n")
                )
        with log:
            logger.debug("lease %s: pid %d runs %s", lease_id, proc.pid, commands.redact(cmd)[:300])
            try:
                returncode = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill(lease_files.TERM_GRACE_S)
                elapsed = round(time.monotonic() - started, 2)
                logger.warning(
                    "lease %s: command timed out after %g s; its process group was killed", lease_id, timeout_s
                )
                return log.result(
                    ok=False,
                    exit_code=124,
                    data={**data, "elapsed_s": elapsed, "timed_out": True},
                    before=note,
                    after=f"\n[dcluster-agent] timed out after {timeout_s:g} s; the "
                    "command's process group was killed\n",
                )
            finally:  # ended, or ended by the timeout
                self._cpu_caps.command_ended(lease_id, lease.sandbox, cmd)
            elapsed = round(time.monotonic() - started, 2)
            exit_code = lease_files.exit_code(returncode)
            logger.info("lease %s: command exited %d in %.1f s", lease_id, exit_code, elapsed)
            if lease.closing:
                # Stopped by the lease's close: whatever the shell said as it went (it may exit 0 on the
                # signal), the command did not finish.
                return log.result(
                    ok=False,
                    exit_code=exit_code,
                    data={**data, "elapsed_s": elapsed},
                    before=note,
                    after=f"\n[dcluster-agent] stopped by the close of lease {lease_id}\n",
                )
            return log.result(ok=exit_code == 0, exit_code=exit_code, data={**data, "elapsed_s": elapsed}, before=note)

    def put_file(self, lease_id: str, path: str, content: bytes) -> protocol.WorkResult:
        """Write content (mode 0600) at path: '~' is the lease's HOME, relative paths are under it."""
        lease = self._get(lease_id)
        try:
            target = self._target(lease, path)
        except lease_files.LeaseError as exc:
            return protocol.WorkResult(ok=False, output=str(exc))
        try:
            lease.sandbox.put_file(target, content)  # as the lease's user, from inside its view
        except (sandbox.SandboxError, OSError) as exc:
            return protocol.WorkResult(ok=False, output=f"cannot write {path}: {exc}")
        logger.info("lease %s: wrote %d bytes to %s", lease_id, len(content), target)
        return protocol.WorkResult(ok=True, exit_code=0, data={"path": str(target), "bytes": len(content)})

    def _target(self, lease: lease_files.Lease, path: str) -> Path:
        """Where put_file writes. In a sandbox the lease's user writes it from inside its own view, so the path is
        checked as written (no link of the lease's is resolved here, as root); unsandboxed the agent writes it
        itself, so links that exist are resolved first."""
        if not path or "\0" in path:
            raise lease_files.LeaseError(
                "put_file needs a path, e.g. ~/ray_bootstrap_config.yaml", lease_id=lease.lease_id
            )
        if path == "~" or path.startswith("~/"):
            candidate = lease.home / path[2:]
        elif path.startswith("~"):
            raise lease_files.LeaseError(f"{path!r}: only the lease's own home '~' is allowed", lease_id=lease.lease_id)
        else:
            candidate = lease.home / path  # an absolute path replaces the home here
        resolve = os.path.normpath if self._runtime.sandboxed else os.path.realpath
        lease_dir = Path(resolve(lease.dir))
        real = Path(resolve(candidate))
        protected = {
            lease_dir / lease_files.RECORD_FILE,
            lease_dir / lease_files.TOKEN_FILE,
            lease_dir,
            Path(resolve(lease.home)),
        }
        if not real.is_relative_to(lease_dir) or real in protected:
            raise lease_files.LeaseError(
                f"{path!r} is outside the lease's directory; write under ~ instead", lease_id=lease.lease_id
            )
        if not self._runtime.sandboxed and real.is_dir():
            raise lease_files.LeaseError(f"{path!r} is a directory; give a file path", lease_id=lease.lease_id)
        return real


class _CommandLog:
    """One command's output: a file the agent makes in the lease's logs dir before the command starts, and reads
    afterwards through its own descriptor (lease_fs.create_log), whatever the lease did to the name meanwhile."""

    def __init__(self, lease: lease_files.Lease, name: str):
        self.lease = lease
        self.name = name
        self.path = lease.logs / name
        self._fd: int | None = None

    def create(self) -> None:
        self._fd = lease_fs.create_log(self.lease.dir, lease_files.LOGS_DIR, self.name, self.lease.uid, self.lease.gid)

    def result(self, *, ok: bool, exit_code: int, data: dict, before: str = "", after: str = "") -> protocol.WorkResult:
        """The command's answer: its output from the agent's own file; not ok, and said so, when the lease put
        something else at the log's name while the command ran."""
        assert self._fd is not None
        text = before + lease_fs.tail_of(self._fd, protocol.MAX_OUTPUT_BYTES).text + after
        replaced = not lease_fs.same_file(self._fd, self.lease.dir, f"{lease_files.LOGS_DIR}/{self.name}")
        if replaced and not self.lease.closing:  # a closing lease's files go with it: no tampering to report
            logger.warning("lease %s: the log %s was replaced while its command ran", self.lease.lease_id, self.name)
            ok = False
            text += (
                f"\n[dcluster-agent] {self.path} was replaced while the command ran (a link, another file or "
                "nothing stands there now): not read; the output above is what reached the log the agent made\n"
            )
        return protocol.WorkResult(ok=ok, exit_code=exit_code, output=_last(text), data=data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> _CommandLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def stop_data(summary: procs.StopSummary) -> dict:
    return {
        "stopped": len(summary.terminated),
        "killed": len(summary.killed),
        "remaining": summary.remaining,
        "elapsed_s": summary.elapsed_s,
    }


def _last(text: str, limit: int = protocol.MAX_OUTPUT_BYTES) -> str:
    return text[-limit:]
