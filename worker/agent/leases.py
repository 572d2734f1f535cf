"""LeaseRunner: the Ray nodes this machine runs for buyers, one lease each (dir, HOME, ports, processes).

A lease is one Ray node (head or worker) of a buyer's sub-cluster. The platform's cluster
launcher (and later the sub-cluster head's autoscaler) sends its commands through the agent,
and they run here: each in `bash -c` with the lease's HOME, ports, auth token and GPUs, inside
the lease's sandbox (worker.agent.sandbox: docker or bwrap; made when the lease opens, ended when it
closes, with every process in it). Every process is also tagged
``DCLUSTER_OWNER=dcl-lease-<lease id>`` (worker.procs): without a sandbox (`--runtime none`)
that tag is what `ray stop` and closing the lease go by.

Layout (in a sandbox, only the paths marked "inside" are there, at the same place)::

    <root>/<lease id>/           0700  the agent's
        lease.json               0600  what recover() needs after an agent restart
        sandbox.log              0600  the sandbox runtime's own output
        etc/passwd, etc/group    0644  the lease's user, bound as /etc/passwd and /etc/group inside
        ray_auth_token           0400  inside, read-only: the sub-cluster's token (RAY_AUTH_TOKEN_PATH)
        home/                    0700  inside, writable: HOME of every command ('~' of the launcher)
        logs/NNNN-run.log        0600  inside, writable: output of each command (made by the agent, read back
                                       through its own descriptor: worker.agent.lease_fs)
    /tmp/dcl-<lease id>/         0700  inside, writable: Ray's --temp-dir (short: unix socket paths <= 107 bytes)

The lease's own files belong to the lease's user (a uid of its own under bwrap and docker).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import worker
from dcl_core import commands, domain, ids, protocol, secret_files
from dcl_core import ray_ports as ray_ports_mod
from worker import procs
from worker.agent import cpu_caps, lease_fs, lease_logs, start_once
from worker.agent.lease_files import (
    HOME_DIR,
    LEASE_USER,
    LOGS_DIR,
    RECORD_FILE,
    TERM_GRACE_S,
    TOKEN_FILE,
    LeaseError,
    owner_tag,
    temp_dir_for,
)
from worker.agent.lease_files import Lease as _Lease
from worker.agent.lease_files import exit_code as _exit_code
from worker.agent.lease_files import user_files as _user_files
from worker.agent.sandbox import base as sandbox

logger = logging.getLogger(__name__)

# The only variables of the agent's environment a lease gets: nothing of the agent's (its password,
# its Ray settings, its HOME) reaches a buyer's node.
_KEPT_ENV = frozenset({"PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM"})
# JSON objects the launcher sets per node type; the lease's own entries are merged over them.
_OVERRIDE_ENV = {"RAY_OVERRIDE_RESOURCES": "resources", "RAY_OVERRIDE_LABELS": "labels"}
_LEASE_ID_RE = re.compile(ids.LEASE_ID_PATTERN)


class UnknownLease(LeaseError):
    """No open lease has this id on this machine (never opened, closed, or lost in an agent restart)."""


class LeaseConflict(LeaseError):
    """LEASE_OPEN for an id that is already open for another cluster or role."""


class RunnerClosed(LeaseError):
    """The agent is shutting down; no new lease or command starts."""


def _merge_json_object(name: str, sent: str | None, ours: Mapping) -> str:
    base: dict = {}
    if sent:
        try:
            base = json.loads(sent)
        except ValueError:
            raise LeaseError(f"{name} in the command's env is not JSON; send a JSON object") from None
        if not isinstance(base, dict):
            raise LeaseError(f"{name} in the command's env must be a JSON object, not {type(base).__name__}")
    return json.dumps({**base, **ours}, sort_keys=True)


_NODE_IP_IMPORT_LOCK = threading.Lock()


def default_node_ip() -> str:
    """The IP Ray uses for a node on this machine (Ray rewrites 127.0.0.1 to it anyway).

    Ray is imported lazily (heavy, and needed once per agent), under a lock: the first lease opens
    run in parallel threads, and a second thread importing Ray's circular modules while the first
    is half-way gets ImportError ("partially initialized module")."""
    with _NODE_IP_IMPORT_LOCK:
        from ray._private import services

        return services.get_node_ip_address()


class LeaseRunner:
    """Opens, runs commands in, and closes this machine's leases; thread-safe, one per agent."""

    def __init__(
        self,
        root_dir: Path,
        *,
        machine_id_fn: Callable[[], str | None] | None = None,
        node_ip: str | None = None,
        base_env: Mapping[str, str] | None = None,
        runtime: sandbox.Runtime | None = None,
        limits_fn: Callable[[protocol.LeaseOpen], sandbox.LeaseLimits] | None = None,
        check_env: Mapping[str, str] | None = None,
        caps: cpu_caps.CpuCaps | None = None,
    ):
        self.root = Path(root_dir).expanduser()
        secret_files.ensure_private_dir(self.root)
        self._machine_id_fn = machine_id_fn or (lambda: None)
        self._node_ip = node_ip
        source = os.environ if base_env is None else base_env
        self._base_env = {k: v for k, v in source.items() if k in _KEPT_ENV}
        self.runtime = runtime or sandbox.UnsandboxedRuntime()
        self._limits_fn = limits_fn or (lambda _payload: sandbox.LeaseLimits())
        self._check_env = dict(check_env or {})  # only GPU check leases get these (the test-only fake NVML)
        self.cpu_caps = caps or cpu_caps.CpuCaps()
        self._starts = start_once.StartOnce()
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._node_ip_lock = threading.Lock()  # resolved once, by the first open; the others wait for it
        self._closed = False

    @property
    def node_ip(self) -> str:
        with self._node_ip_lock:
            if self._node_ip is None:
                self._node_ip = default_node_ip()
            return self._node_ip

    def lease_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._leases)

    def ports_of(self, lease_id: str) -> ray_ports_mod.RayPorts:
        """The Ray ports the open lease was given."""
        return self._get(lease_id).ports

    def _get(self, lease_id: str) -> _Lease:
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is not None and lease.sandbox is None:
            raise LeaseError(f"lease {lease_id} is still opening; retry in a moment", lease_id=lease_id)
        if lease is None:
            raise UnknownLease(
                f"lease {lease_id} is not open on this machine (closed, or lost when the agent "
                "restarted); open it again",
                lease_id=lease_id,
            )
        return lease

    # --- open ----------------------------------------------------------------------------

    def open(self, payload: protocol.LeaseOpen) -> protocol.LeaseOpened:
        """Prepare the lease's dirs, token, ports, record and sandbox; a repeated open returns the same answer.

        The lease is reserved under the lock (ports, uid) and made outside it: a sandbox takes a
        while to start on a busy machine, and heartbeats read the open leases meanwhile.
        """
        lease_id = payload.lease_id
        node_ip = self.node_ip  # outside the lock: the first call imports Ray
        candidate = self.runtime.lease_user(lease_id, set())  # scans the machine's processes: outside the lock
        with self._lock:
            if self._closed:
                raise RunnerClosed("the agent is stopping; no new lease opens", lease_id=lease_id)
            lease = self._leases.get(lease_id)
            if lease is not None:
                if (lease.purpose, lease.cluster_id, lease.role) != (payload.purpose, payload.cluster_id, payload.role):
                    raise LeaseConflict(
                        f"lease {lease_id} is already open for {lease.cluster_id or lease.purpose} "
                        f"as {lease.role or lease.purpose}; close it first",
                        lease_id=lease_id,
                    )
                return lease.opened()
            taken: set[int] = set()
            for other in self._leases.values():  # nothing listens yet: free ports alone do not tell
                taken |= other.ports.all_ports()
            ports = procs.allocate_ray_ports(exclude=tuple(sorted(taken)))
            uids = {other.uid for other in self._leases.values() if other.uid is not None}
            user = (
                candidate if candidate is None or candidate[0] not in uids else self.runtime.lease_user(lease_id, uids)
            )
            lease = _Lease(
                lease_id=lease_id,
                purpose=payload.purpose,
                cluster_id=payload.cluster_id,
                role=payload.role,
                gpu_indices=list(payload.gpu_indices),
                resources=dict(payload.resources),
                labels={**payload.labels, protocol.LEASE_LABEL: lease_id},
                head_gcs_port=payload.head_gcs_port,
                ports=ports,
                node_ip=node_ip,
                dir=self.root / lease_id,
                temp_dir=temp_dir_for(lease_id),
                machine_id=self._machine_id_fn(),
                opened_at=time.time(),
                uid=user[0] if user else None,
                gid=user[1] if user else None,
            )
            self._leases[lease_id] = lease  # reserves its ports and uid; no command runs before its sandbox
        try:
            secret_files.ensure_private_dir(lease.dir)
            for name in (HOME_DIR, LOGS_DIR):
                lease_fs.make_dir(lease.dir, name, uid=lease.uid, gid=lease.gid, mode=0o700)
            # /tmp is shared: a dir already there is taken only if it is our own or the lease's real directory
            lease_fs.make_dir(lease.temp_dir.parent, lease.temp_dir.name, uid=lease.uid, gid=lease.gid, mode=0o700)
            secret_files.write_secret_file(lease.token_path, payload.ray_auth_token.encode())
            lease_fs.give(
                lease.dir, TOKEN_FILE, uid=lease.uid, gid=lease.gid, mode=0o400 if lease.uid is not None else 0o600
            )
            secret_files.write_secret_file(lease.dir / RECORD_FILE, json.dumps(lease.record(), indent=2).encode())
            lease.sandbox = self.runtime.create(
                sandbox.SandboxSpec(
                    lease_id=lease_id,
                    owner_tag=lease.tag,
                    uid=lease.uid,
                    gid=lease.gid,
                    writable=(lease.home, lease.logs, lease.temp_dir),
                    readonly=(lease.token_path,),
                    etc_files=_user_files(lease),
                    gpu_indices=tuple(lease.gpu_indices),
                    limits=self._limits_fn(payload),
                    image=payload.image,
                    log_path=lease.dir / "sandbox.log",
                )
            )
        except BaseException as exc:
            with self._lock:
                self._leases.pop(lease_id, None)
            lease_fs.remove_tree(lease.dir)
            lease_fs.remove_tree(lease.temp_dir)
            self.runtime.cleanup_stale(lease_id)
            if isinstance(exc, (sandbox.SandboxError, lease_fs.Refused)):
                raise LeaseError(str(exc), lease_id=lease_id) from None
            raise
        self.cpu_caps.opened(lease_id, lease.sandbox, ray_node=lease.purpose == protocol.NODE_LEASE)
        logger.info(
            "lease %s opened: %s of %s, GCS port %s, GPUs %s",
            lease_id,
            lease.role or lease.purpose,
            lease.cluster_id or "no cluster",
            ports.gcs if lease.role == domain.NodeRole.HEAD else payload.head_gcs_port,
            lease.gpu_indices or "none",
        )
        return lease.opened()

    # --- environment ---------------------------------------------------------------------

    def environment(self, lease_id: str, command_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a command of this lease: agent env, lease settings, then the command's env."""
        lease = self._get(lease_id)
        env = dict(self._base_env)
        bin_dir = str(Path(sys.executable).parent)
        repo_root = str(Path(worker.__file__).resolve().parents[1])
        env["HOME"] = str(lease.home)
        if lease.uid is not None:
            env["USER"] = env["LOGNAME"] = LEASE_USER
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, self._base_env.get("PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, self._base_env.get("PYTHONPATH", "")) if p)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(lease.token_path)
        env.update(lease.ports.env())
        env[protocol.ENV_PORT_FLAGS] = " ".join(
            lease.ports.start_flags(head=lease.role == domain.NodeRole.HEAD, temp_dir=lease.temp_dir)
        )
        env[protocol.ENV_LEASE_ID] = lease.lease_id
        if lease.role == domain.NodeRole.WORKER and lease.head_gcs_port is not None:
            env[protocol.ENV_HEAD_GCS_PORT] = str(lease.head_gcs_port)
        # "": a CPU lease sees no GPU. In a sandbox only the leased GPUs exist, numbered from 0.
        env["CUDA_VISIBLE_DEVICES"] = self.runtime.cuda_visible_devices(lease.gpu_indices)
        env[procs.OWNER_ENV] = lease.tag
        if lease.purpose == protocol.GPU_CHECK_LEASE:
            env.update(self._check_env)
        command_env = dict(command_env or {})
        overrides = {name: command_env.pop(name, None) for name in _OVERRIDE_ENV}
        env.update(command_env)
        for name, sent in overrides.items():
            env[name] = _merge_json_object(name, sent, getattr(lease, _OVERRIDE_ENV[name]))
        return env

    # --- run -----------------------------------------------------------------------------

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

    def _run(self, lease: _Lease, cmd: str, env: Mapping[str, str] | None, timeout_s: float) -> protocol.WorkResult:
        lease_id = lease.lease_id
        note = ""
        data: dict = {}
        if not self.runtime.sandboxed and commands.stops_ray(cmd):
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
            data = {"ray_stop": _summary_data(summary)}
            if not summary.clean:
                return protocol.WorkResult(
                    ok=False,
                    exit_code=1,
                    data=data,
                    output=note + (f"[dcluster-agent] still alive after the stop: {summary.remaining}\n"),
                )
            cmd = commands.RAY_STOP_RE.sub(":", cmd)
        full_env = self.environment(lease_id, env)
        started = time.monotonic()
        with lease.lock:  # close() sets `closing` under this lock: no command starts after its sweep
            if self._closed or lease.closing:
                raise RunnerClosed(f"lease {lease_id} is closing; the command was not run", lease_id=lease_id)
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
                proc.kill(TERM_GRACE_S)
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
                self.cpu_caps.command_ended(lease_id, lease.sandbox, cmd)
            elapsed = round(time.monotonic() - started, 2)
            exit_code = _exit_code(returncode)
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

    # --- files ---------------------------------------------------------------------------

    def put_file(self, lease_id: str, path: str, content: bytes) -> protocol.WorkResult:
        """Write content (mode 0600) at path: '~' is the lease's HOME, relative paths are under it."""
        lease = self._get(lease_id)
        try:
            target = self._target(lease, path)
        except LeaseError as exc:
            return protocol.WorkResult(ok=False, output=str(exc))
        try:
            lease.sandbox.put_file(target, content)  # as the lease's user, from inside its view
        except (sandbox.SandboxError, OSError) as exc:
            return protocol.WorkResult(ok=False, output=f"cannot write {path}: {exc}")
        logger.info("lease %s: wrote %d bytes to %s", lease_id, len(content), target)
        return protocol.WorkResult(ok=True, exit_code=0, data={"path": str(target), "bytes": len(content)})

    def _target(self, lease: _Lease, path: str) -> Path:
        """Where put_file writes. In a sandbox the lease's user writes it from inside its own view, so the path is
        checked as written (no link of the lease's is resolved here, as root); unsandboxed the agent writes it
        itself, so links that exist are resolved first."""
        if not path or "\0" in path:
            raise LeaseError("put_file needs a path, e.g. ~/ray_bootstrap_config.yaml", lease_id=lease.lease_id)
        if path == "~" or path.startswith("~/"):
            candidate = lease.home / path[2:]
        elif path.startswith("~"):
            raise LeaseError(f"{path!r}: only the lease's own home '~' is allowed", lease_id=lease.lease_id)
        else:
            candidate = lease.home / path  # an absolute path replaces the home here
        resolve = os.path.normpath if self.runtime.sandboxed else os.path.realpath
        lease_dir = Path(resolve(lease.dir))
        real = Path(resolve(candidate))
        protected = {lease_dir / RECORD_FILE, lease_dir / TOKEN_FILE, lease_dir, Path(resolve(lease.home))}
        if not real.is_relative_to(lease_dir) or real in protected:
            raise LeaseError(
                f"{path!r} is outside the lease's directory; write under ~ instead", lease_id=lease.lease_id
            )
        if not self.runtime.sandboxed and real.is_dir():
            raise LeaseError(f"{path!r} is a directory; give a file path", lease_id=lease.lease_id)
        return real

    # --- close ---------------------------------------------------------------------------

    def close(self, lease_id: str, grace_s: float = 2.0) -> protocol.WorkResult:
        """Stop every process of the lease (only those), remove its files, forget it; idempotent."""
        _check_id(lease_id)
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is not None:
            with lease.lock:  # a command starting now has started; none starts after this
                lease.closing = True
        if lease is not None and lease.sandbox is not None:
            summary = lease.sandbox.close(grace_s)
        else:  # not open in this run of the agent: whatever a previous run left
            self.runtime.cleanup_stale(lease_id)
            summary = procs.stop_owned(owner_tag(lease_id), grace_s=grace_s)
        data = _summary_data(summary)
        if not summary.clean:
            logger.warning(
                "lease %s: processes %s survived the stop; the lease stays for a retry", lease_id, summary.remaining
            )
            return protocol.WorkResult(
                ok=False,
                output=f"processes {summary.remaining} of lease {lease_id} are still alive; close it again",
                data=data,
            )
        temp_dir = lease.temp_dir if lease else temp_dir_for(lease_id)
        # Shipped with the answer before the files go: the buyer reads them after the cluster ended.
        data["logs"] = lease_logs.collect(temp_dir, self.root / lease_id / LOGS_DIR)
        lease_fs.remove_tree(temp_dir)
        lease_fs.remove_tree(self.root / lease_id)
        with self._lock:
            self._leases.pop(lease_id, None)
        self.cpu_caps.closed(lease_id)
        self._starts.forget(lease_id)
        if lease is None and not summary.terminated:
            return protocol.WorkResult(ok=True, exit_code=0, output=f"lease {lease_id} was not open", data=data)
        logger.info(
            "lease %s closed: %d process(es) stopped (%d killed) in %.1f s",
            lease_id,
            len(summary.terminated),
            len(summary.killed),
            summary.elapsed_s,
        )
        return protocol.WorkResult(
            ok=True,
            exit_code=0,
            data=data,
            output=(
                f"lease {lease_id} closed: stopped {len(summary.terminated)} process(es) in {summary.elapsed_s:.1f} s"
            ),
        )

    def close_all(self, grace_s: float = 2.0) -> dict[str, protocol.WorkResult]:
        """Agent shutdown: refuse new work, then close every lease in parallel."""
        with self._lock:
            self._closed = True
            open_ids = sorted(self._leases)
        results: dict[str, protocol.WorkResult] = {}

        def close_one(lease_id: str) -> None:
            try:
                results[lease_id] = self.close(lease_id, grace_s=grace_s)
            except Exception as exc:
                logger.exception("closing lease %s failed", lease_id)
                results[lease_id] = protocol.WorkResult(ok=False, output=f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=close_one, args=(i,), name=f"dcluster-close-{i}") for i in open_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def recover(self) -> list[str]:
        """At agent start: stop and remove the leases a previous run of the agent left on disk."""
        found = []
        for entry in sorted(self.root.iterdir()):
            lease_id = entry.name
            if not _LEASE_ID_RE.match(lease_id) or not entry.is_dir() or entry.is_symlink():
                continue
            with self._lock:
                if lease_id in self._leases:
                    continue
            found.append(lease_id)
            self.runtime.cleanup_stale(lease_id)
            summary = procs.stop_owned(owner_tag(lease_id), grace_s=2.0)
            if not summary.clean:
                logger.warning(
                    "lease %s from a previous run: processes %s survive; its files stay", lease_id, summary.remaining
                )
                continue
            lease_fs.remove_tree(temp_dir_for(lease_id))
            lease_fs.remove_tree(entry)
            logger.warning(
                "lease %s from a previous run of the agent cleaned up: %d process(es) stopped",
                lease_id,
                len(summary.terminated),
            )
        return found


class _CommandLog:
    """One command's output: a file the agent makes in the lease's logs dir before the command starts, and reads
    afterwards through its own descriptor (lease_fs.create_log), whatever the lease did to the name meanwhile."""

    def __init__(self, lease: _Lease, name: str):
        self.lease = lease
        self.name = name
        self.path = lease.logs / name
        self._fd: int | None = None

    def create(self) -> None:
        self._fd = lease_fs.create_log(self.lease.dir, LOGS_DIR, self.name, self.lease.uid, self.lease.gid)

    def result(self, *, ok: bool, exit_code: int, data: dict, before: str = "", after: str = "") -> protocol.WorkResult:
        """The command's answer: its output from the agent's own file; not ok, and said so, when the lease put
        something else at the log's name while the command ran."""
        assert self._fd is not None
        text = before + lease_fs.tail_of(self._fd, protocol.MAX_OUTPUT_BYTES).text + after
        replaced = not lease_fs.same_file(self._fd, self.lease.dir, f"{LOGS_DIR}/{self.name}")
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


def _check_id(lease_id: str) -> None:
    if not isinstance(lease_id, str) or not _LEASE_ID_RE.match(lease_id):
        raise LeaseError(f"{lease_id!r} is not a lease id (l- and 12 hex digits)")


def _summary_data(summary: procs.StopSummary) -> dict:
    return {
        "stopped": len(summary.terminated),
        "killed": len(summary.killed),
        "remaining": summary.remaining,
        "elapsed_s": summary.elapsed_s,
    }


def _last(text: str, limit: int = protocol.MAX_OUTPUT_BYTES) -> str:
    return text[-limit:]
