"""LeaseRunner: opens and closes the Ray nodes this machine runs for buyers, one lease each (dir, HOME, ports).

What runs inside an open lease is lease_commands.py; its environment, lease_env.py.

A lease is one Ray node (head or worker) of a buyer's sub-cluster. The platform's cluster
launcher (and later the sub-cluster head's autoscaler) sends its commands through the agent,
and they run here: each in `bash -c` with the lease's HOME, ports, auth token and GPUs, inside
the lease's sandbox (worker.agent.sandbox: docker or bwrap; made when the lease opens, ended when it
closes, with every process in it). Every process is also tagged
``DCLUSTER_OWNER=dcl-lease-<lease id>`` (worker.procs): without a sandbox (`--runtime none`)
that tag is what `ray stop` and closing the lease go by.

Layout (in a sandbox, only the paths marked "inside" are there, at the same place)::

    <root>/<lease id>/           0700  the agent's
        lease.json               0600  the lease's record: what recover() rebuilds it from after an agent restart
        supervisor.sock          0600  bwrap: the lease's supervisor listens here (only the agent's user reaches it)
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

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from dcl_core import domain, ids, protocol, secret_files
from dcl_core import ray_ports as ray_ports_mod
from worker import procs
from worker.agent import (
    cpu_caps,
    lease_commands,
    lease_env,
    lease_files,
    lease_fs,
    lease_logs,
    lease_recovery,
    start_once,
)
from worker.agent.lease_files import (
    HOME_DIR,
    LOGS_DIR,
    TOKEN_FILE,
    LeaseError,
    owner_tag,
    temp_dir_for,
)
from worker.agent.lease_files import Lease as _Lease
from worker.agent.lease_files import user_files as _user_files
from worker.agent.sandbox import base as sandbox
from worker.agent.sandbox import unsandboxed

logger = logging.getLogger(__name__)

_LEASE_ID_RE = re.compile(ids.LEASE_ID_PATTERN)


class UnknownLease(LeaseError):
    """No open lease has this id on this machine (never opened, closed, or lost in an agent restart)."""


class LeaseConflict(LeaseError):
    """LEASE_OPEN for an id that is already open for another cluster or role."""


RunnerClosed = lease_files.RunnerClosed  # raised by both halves: callers catch it as leases.RunnerClosed


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
        self.runtime = runtime or unsandboxed.UnsandboxedRuntime()
        self._limits_fn = limits_fn or (lambda _payload: sandbox.LeaseLimits())
        self.cpu_caps = caps or cpu_caps.CpuCaps()
        self._starts = start_once.StartOnce()
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._node_ip_lock = threading.Lock()  # resolved once, by the first open; the others wait for it
        self._closed = False
        self._environment = lease_env.LeaseEnvironment(
            os.environ if base_env is None else base_env, runtime=self.runtime, check_env=check_env
        )
        self._commands = lease_commands.LeaseCommands(
            lookup=self._get,
            environment=self._environment,
            runtime=self.runtime,
            cpu_caps=self.cpu_caps,
            starts=self._starts,
            runner_closed=lambda: self._closed,
        )

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

    def uid_of(self, lease_id: str) -> int | None:
        """The user the open lease runs as; None: the agent's own (runtime none)."""
        return self._get(lease_id).uid

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
            lease.save()
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
                    control_dir=lease.dir,
                )
            )
            lease.save()  # with the sandbox's link: a restarted agent reattaches from it
        except BaseException as exc:
            if lease.sandbox is not None:
                lease.sandbox.close(1.0)
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

    # --- commands (lease_commands.py) --------------------------------------------------

    def environment(self, lease_id: str, command_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a command of this lease (lease_env.py)."""
        return self._environment.of(self._get(lease_id), command_env)

    def run(
        self, lease_id: str, cmd: str, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
    ) -> protocol.WorkResult:
        """Run `bash -c cmd` in the lease's sandbox (LeaseCommands.run)."""
        return self._commands.run(lease_id, cmd, env, timeout_s)

    def put_file(self, lease_id: str, path: str, content: bytes) -> protocol.WorkResult:
        """Write content (mode 0600) at path under the lease's HOME (LeaseCommands.put_file)."""
        return self._commands.put_file(lease_id, path, content)

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
        data = lease_commands.stop_data(summary)
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

    def recover(self) -> lease_recovery.Recovered:
        """At agent start: reattach the leases a previous run of the agent left running, clean up the rest
        (lease_recovery.py)."""
        return lease_recovery.recover(self)

    def adopt(self, lease: _Lease) -> bool:
        """Hold a lease a previous run of the agent opened, its sandbox reached again; False when the runner
        is closing or already holds it."""
        assert lease.sandbox is not None
        with self._lock:
            if self._closed or lease.lease_id in self._leases:
                return False
            self._leases[lease.lease_id] = lease
        self.cpu_caps.opened(lease.lease_id, lease.sandbox, ray_node=False)  # its start window is long over
        return True


def _check_id(lease_id: str) -> None:
    if not isinstance(lease_id, str) or not _LEASE_ID_RE.match(lease_id):
        raise LeaseError(f"{lease_id!r} is not a lease id (l- and 12 hex digits)")
