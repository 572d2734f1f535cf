"""PlatformLauncher: start, stop and inspect the persistent platform (Ray head + Serve app + local agents)."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

import dcluster
from cli import platform_state as pstate
from cli import platform_status
from dcl_core import domain, secret_files
from worker import procs

logger = logging.getLogger(__name__)

RAY_START_TIMEOUT_S = 120.0
HEAD_START_ATTEMPTS = 5
# What `ray start` prints when its raylet missed the fixed registration window (ray/_private/node.py).
RAY_SLOW_START = "timed out during startup"
SERVE_DEPLOY_TIMEOUT_S = 120.0
# `ray start` returns before the dashboard listens (after a head restart, often seconds later);
# `serve deploy` checks it once and gives up, so wait for it first.
DASHBOARD_TIMEOUT_S = 120.0
HEALTHZ_TIMEOUT_S = 180.0
ADMIN_CREDENTIALS_TIMEOUT_S = 60.0
MACHINES_TIMEOUT_S = 60.0
AGENT_LEAVE_GRACE_S = 10.0
STOP_GRACE_S = 5.0
# The executables (not a kill list: only to tell whether the recorded node is still up).
HEAD_CORE_PROCESSES = ("gcs_server", "raylet")
MEMBER_CORE_PROCESSES = ("raylet",)
ROLE_HEAD, ROLE_MEMBER = "head", "member"


@dataclasses.dataclass
class UpResult:
    already_running: bool
    api_url: str
    docs_url: str
    state_dir: Path
    admin_credentials: Path
    credentials: Path
    agent_logs: list[Path]
    ray_dashboard_url: str
    timings_s: dict[str, float]

    def lines(self) -> list[str]:
        head = "platform already running" if self.already_running else "platform is up"
        out = [
            f"{head}: {self.api_url}",
            f"  API docs:          {self.docs_url}",
            f"  admin credentials: {self.admin_credentials}",
            f"  local accounts:    {self.credentials}",
            f"  Ray dashboard:     {self.ray_dashboard_url}",
        ]
        out += [f"  agent log:         {p}" for p in self.agent_logs]
        return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    """What was appended to a log since offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise pstate.PlatformError(f"timed out after {timeout_s:.0f} s waiting for {what}", details=extra or None)
        time.sleep(interval_s)


def _dashboard_get(dashboard_port: int, token_path: Path, path: str) -> httpx.Response:
    """GET on this platform's Ray dashboard with its Ray auth token."""
    headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    return httpx.get(f"http://127.0.0.1:{dashboard_port}{path}", headers=headers, timeout=5)


def _serve_app_failure(dashboard_port: int, token_path: Path) -> str | None:
    """The error of a Serve application that failed to deploy (from the dashboard), else None."""
    try:
        apps = _dashboard_get(dashboard_port, token_path, "/api/serve/applications/").json().get("applications") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for name, app in apps.items():
        if isinstance(app, dict) and app.get("status") == "DEPLOY_FAILED":
            return f"application {name!r}: {app.get('message') or 'DEPLOY_FAILED'}"
    return None


def _dashboard_answers(dashboard_port: int, token_path: Path) -> bool:
    try:
        return _dashboard_get(dashboard_port, token_path, "/api/version").status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def last_error_line(text: str) -> str:
    """The `SomeError: message` line of a traceback (the last one), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    return ((errors or lines or [""])[-1])[:300]


class PlatformLauncher:
    """The platform on this machine, described by <state_dir>/platform.json."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        port: int = 8000,
        host: str = "127.0.0.1",
        providers: int = 0,
        heartbeat_s: float = 5.0,
        agent_gpus: int | None = None,
        agent_cpus: int | None = None,
        settings: dict | None = None,
        agent_runtime: str | None = None,
        redis: str | None = None,
        join: str | None = None,
        api_replicas: int | None = None,
    ):
        if providers < 0:
            raise pstate.PlatformError("--providers must be >= 0")
        if providers and not _is_loopback(host):
            raise pstate.PlatformError(
                f"--providers runs provider agents on this machine, beside the platform and its secrets; that is "
                f"for a platform only this machine can reach. With --host {host} the API is reachable from "
                "elsewhere: run `dcluster-agent` on the providers' own machines instead, or use --host 127.0.0.1"
            )
        if not 1 <= port <= 65535:
            raise pstate.PlatformError(f"--port {port} is not a TCP port")
        self.state_dir = Path(state_dir or pstate.default_state_dir()).expanduser().absolute()
        self.layout = pstate.Layout(self.state_dir)
        self.port = port
        self.host = host
        self.providers = providers
        self._enroll_anew: set[int] = set()  # local agents whose provider account this `up` created
        self.heartbeat_s = heartbeat_s
        self.agent_gpus = agent_gpus
        self.agent_cpus = agent_cpus
        self.agent_runtime = agent_runtime  # None: each agent's default (docker where a daemon answers, else bwrap)
        self.settings = dict(settings or {})  # more PlatformSettings fields for the Serve app
        # GCS fault tolerance: the head's GCS keeps its tables in this Redis, so a restarted head recovers them.
        self.redis = redis
        if redis is not None:
            pstate.redis_address(redis)
        # Another platform node: the head's GCS address (host:port) it joins.
        self.join = join
        if join is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+:[0-9]{1,5}", join):
            raise pstate.PlatformError(
                f"--join takes the head's GCS address HOST:PORT (got {join!r}); `dcluster status` on the head prints it"
            )
        if join is not None and (providers or redis or self.settings):
            raise pstate.PlatformError(
                "--join adds a node to a running platform: its settings (--database, --redis, "
                "--providers) are the head's"
            )
        self.shared_database = bool(self.settings.get("database"))
        if api_replicas is not None and not self.shared_database:
            raise pstate.PlatformError(
                "--api-replicas needs --database: on SQLite the API runs beside the head's database"
            )
        if api_replicas is not None and not 1 <= api_replicas <= 64:
            raise pstate.PlatformError("--api-replicas must be between 1 and 64")
        # On PostgreSQL: the API's replicas one a node, each listening on its node (set it to the number of nodes).
        self.api_replicas = api_replicas or 2

    # --- recorded state ------------------------------------------------------------------

    def _load(self) -> dict | None:
        return pstate.read_json(self.layout.platform_json)

    def _save(self, record: dict) -> None:
        pstate.write_json(self.layout.platform_json, record)

    def _is_running(self, record: dict | None) -> bool:
        if not record or record.get("status") != pstate.STATUS_RUNNING:
            return False
        head = record.get("head_processes") or []
        if not head or not all(platform_status.record_alive(r) for r in head):
            return False
        return platform_status.healthy(platform_status.api_url(record))

    # --- up ------------------------------------------------------------------------------

    def up(self) -> UpResult:
        secret_files.ensure_private_dir(self.state_dir)
        with pstate.state_lock(self.state_dir):
            record = self._load()
            if self._is_running(record):
                return self._already_running(record)
            if record and record.get("owner_tag"):
                self._stop_leftovers(record)
            if self.join:
                return self._join()
            return self._start(self._recovering(record))

    def _recovering(self, record: dict | None) -> dict | None:
        """The previous head's record when this head restarts on the same Redis: its GCS must come back at the
        same address (the other nodes reconnect to it), so its ports are taken again."""
        if not self.redis or not record or record.get("redis") != self.redis or not record.get("ray_ports"):
            return None
        if record.get("role", ROLE_HEAD) != ROLE_HEAD:
            return None
        return record

    def _already_running(self, record: dict) -> UpResult:
        logger.info("platform already running (owner tag %s)", record["owner_tag"])
        if record.get("host") != self.host or record.get("port") != self.port:
            logger.warning(
                "it listens on %s:%s; run `dcluster down` first to change that", record.get("host"), record.get("port")
            )
        if len(record.get("agents", [])) != self.providers:
            logger.warning(
                "it runs %d local agents, not %d; run `dcluster down` first to change that",
                len(record.get("agents", [])),
                self.providers,
            )
        return self._result(record, already_running=True, timings={})

    def _stop_leftovers(self, record: dict) -> None:
        """A previous platform died or `up` failed midway: stop whatever of it is still alive."""
        tags = [a["owner_tag"] for a in record.get("agents", [])] + [record["owner_tag"]]
        for tag in tags:
            summary = procs.stop_owned(tag, grace_s=STOP_GRACE_S)
            if summary.terminated:
                logger.info("stopped %d leftover processes of %s", len(summary.terminated), tag)

    def _start(self, previous: dict | None = None) -> UpResult:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        # A restarted head's HTTP port may be served meanwhile by the proxy of another platform node on this machine.
        if previous is None and not procs.port_is_free(self.port, self.host):
            raise pstate.PlatformError(
                f"port {self.port} on {self.host} is already in use; "
                f"choose another with --port, or stop what listens there"
            )
        template = pstate.SERVE_TEMPLATE
        if not template.exists():
            raise pstate.PlatformError(f"{template} not found: the Serve config of the platform is missing")
        secret_files.ensure_private_dir(self.layout.home)
        secret_files.ensure_private_dir(self.layout.logs)
        if previous is not None:
            # Only the GCS port must be the same (the other nodes reconnect to it); the rest are picked afresh,
            # since another node on this machine may hold one of the old ones by now.
            gcs = pstate.RayPorts.from_dict(previous["ray_ports"]).gcs
            ports = dataclasses.replace(procs.allocate_ray_ports(exclude=(self.port, gcs)), gcs=gcs)
            logger.info("restarting the head on Redis %s: the GCS comes back at 127.0.0.1:%d", self.redis, gcs)
        else:
            ports = procs.allocate_ray_ports(exclude=(self.port,))
        temp_dir = pstate.ray_temp_dir(self.state_dir)
        secret_files.ensure_private_dir(temp_dir)
        if previous is not None:
            # The dead head's address file: with a joined node on this machine whose processes name that GCS
            # address, `ray start` would take the head for still running and refuse.
            (temp_dir / pstate.RAY_ADDRESS_FILE).unlink(missing_ok=True)
        record = {
            "version": 1,
            "role": ROLE_HEAD,
            "redis": self.redis,
            "shared_database": self.shared_database,
            "status": pstate.STATUS_STARTING,
            "owner_tag": pstate.new_owner_tag(),
            "host": self.host,
            "port": self.port,
            "providers": self.providers,
            "heartbeat_s": self.heartbeat_s,
            "agent_gpus": self.agent_gpus,
            "agent_cpus": self.agent_cpus,
            "temp_dir": str(temp_dir),
            "ray_ports": ports.to_dict(),
            "head_processes": [],
            "agents": [],
            "started_at": time.time(),
        }
        self._save(record)
        try:
            env = self._node_env(ports)
            if self.redis:
                env.update(pstate.gcs_fault_tolerance_env(os.environ, redis_url=self.redis, state_dir=self.state_dir))
            self._start_head(record, env, ports, temp_dir)
            timings["ray_head"] = round(time.monotonic() - t0, 1)
            t1 = time.monotonic()
            self._deploy_serve(record, env, ports, temp_dir)
            timings["serve"] = round(time.monotonic() - t1, 1)
            api = dcluster.Client(platform_status.api_url(record))
            try:
                self._login_admin(api)
                self._ensure_accounts(api)
                t2, agents_started = time.monotonic(), time.time()
                self._start_agents(record)
                self._wait_for_machines(api, since=agents_started)
                timings["agents"] = round(time.monotonic() - t2, 1)
            finally:
                api.close()
        except BaseException as exc:
            record["status"] = pstate.STATUS_FAILED
            record["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
            self._save(record)
            logger.info("start failed; stopping what was started")
            self._stop_leftovers(record)
            raise
        record["status"] = pstate.STATUS_RUNNING
        record.pop("error", None)
        self._save(record)
        timings["total"] = round(time.monotonic() - t0, 1)
        return self._result(record, already_running=False, timings=timings)

    def _node_env(self, ports: pstate.RayPorts) -> dict:
        env = pstate.ray_env(os.environ, layout=self.layout, ports=ports)
        if self.shared_database or self.join:
            env.update(pstate.secret_key_env(os.environ, self.layout))
        return env

    def _join(self) -> UpResult:
        """Another platform node: a raylet of its own (ports, temp dir, state dir) in the head's Ray cluster."""
        t0 = time.monotonic()
        if not self.layout.ray_auth_token.exists():
            raise pstate.PlatformError(
                f"no {self.layout.ray_auth_token}: copy the head's state dir's ray_auth_token "
                "there (chmod 600); only holders of the platform cluster's token may join it"
            )
        keyed = any(os.environ.get(k) for k in (secret_files.SECRET_KEY_ENV, secret_files.SECRET_KEY_FILE_ENV))
        if not keyed and not self.layout.secret_key.exists():
            raise pstate.PlatformError(
                f"no secret key: set {secret_files.SECRET_KEY_ENV} or {secret_files.SECRET_KEY_FILE_ENV} "
                f"as on the head, or copy the head's secret.key to {self.layout.secret_key} (chmod 600)"
            )
        secret_files.ensure_private_dir(self.layout.home)
        secret_files.ensure_private_dir(self.layout.logs)
        ports = procs.allocate_ray_ports(exclude=(self.port,))
        temp_dir = pstate.ray_temp_dir(self.state_dir)
        secret_files.ensure_private_dir(temp_dir)
        record = {
            "version": 1,
            "role": ROLE_MEMBER,
            "join": self.join,
            "status": pstate.STATUS_STARTING,
            "owner_tag": pstate.new_owner_tag(),
            "host": self.host,
            "port": self.port,
            "providers": 0,
            "temp_dir": str(temp_dir),
            "ray_ports": ports.to_dict(),
            "head_processes": [],
            "agents": [],
            "started_at": time.time(),
        }
        self._save(record)
        try:

            def command() -> list[str]:
                return pstate.ray_member_command(head_address=self.join, ports=ports, temp_dir=temp_dir)

            env = {**self._node_env(ports), pstate.GCS_RECONNECT_ENV: str(pstate.MEMBER_GCS_RECONNECT_S)}
            self._start_node(record, env, command, ports, MEMBER_CORE_PROCESSES)
        except BaseException as exc:
            record["status"] = pstate.STATUS_FAILED
            record["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
            self._save(record)
            self._stop_leftovers(record)
            raise
        record["status"] = pstate.STATUS_RUNNING
        self._save(record)
        return self._result(record, already_running=False, timings={"total": round(time.monotonic() - t0, 1)})

    def _start_head(self, record: dict, env: dict, ports: pstate.RayPorts, temp_dir: Path) -> None:
        self._start_node(
            record, env, lambda: pstate.ray_head_command(ports=ports, temp_dir=temp_dir), ports, HEAD_CORE_PROCESSES
        )

    def _start_node(
        self,
        record: dict,
        env: dict,
        command: Callable[[], list[str]],
        ports: pstate.RayPorts,
        core_processes: tuple[str, ...],
    ) -> None:
        role = record.get("role", ROLE_HEAD)
        for attempt in range(1, HEAD_START_ATTEMPTS + 1):
            for port in ports.listening():  # taken since allocation: a GCS port in use would join another cluster
                if not procs.port_is_free(port):
                    raise pstate.PlatformError(f"port {port} was taken while starting; run `dcluster up` again")
            cmd = command()
            logger.info("starting the Ray %s: %s", role, " ".join(cmd[1:4]))
            log_start = self.layout.ray_log.stat().st_size if self.layout.ray_log.exists() else 0
            proc = procs.spawn(
                cmd, env=env, cwd=self.state_dir, log_path=self.layout.ray_log, owner_tag=record["owner_tag"]
            )
            try:
                rc = proc.wait(RAY_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise pstate.PlatformError(
                    f"`ray start` did not finish in {RAY_START_TIMEOUT_S:.0f} s; see {self.layout.ray_log}",
                    details=_tail(self.layout.ray_log),
                ) from None
            if rc == 0:
                break
            # `ray start` gives the raylet a fixed 30 s to register with the GCS; a busy machine can
            # miss that. Slow is not broken: stop what this attempt left and start again.
            if attempt < HEAD_START_ATTEMPTS and RAY_SLOW_START in _read_from(self.layout.ray_log, log_start):
                logger.warning(
                    "`ray start` timed out registering the raylet (attempt %d of %d): the machine is busy; retrying",
                    attempt,
                    HEAD_START_ATTEMPTS,
                )
                procs.stop_owned(record["owner_tag"], grace_s=STOP_GRACE_S)
                continue
            raise pstate.PlatformError(
                f"`ray start` failed (exit {rc}); see {self.layout.ray_log}", details=_tail(self.layout.ray_log)
            )
        owned = [r for r in map(platform_status.proc_record, procs.owned_processes(record["owner_tag"])) if r]
        # Only the processes the node lives and dies with; workers come and go.
        head = [r for r in owned if r["name"] in core_processes]
        if {r["name"] for r in head} != set(core_processes):
            raise pstate.PlatformError(
                f"`ray start` returned but {'/'.join(core_processes)} are not running; see {self.layout.ray_log}",
                details=_tail(self.layout.ray_log),
            )
        record["head_processes"] = head
        self._save(record)
        logger.info("Ray %s up (%d processes)", role, len(owned))

    def _serve_logs_tail(self, temp_dir: Path) -> str:
        serve_dir = temp_dir / "session_latest" / "logs" / "serve"
        files = sorted(serve_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)[-3:] if serve_dir.is_dir() else []
        parts = [f"--- {f} ---\n{_tail(f, 20)}" for f in files]
        return "\n".join(parts) or f"(no Serve logs under {serve_dir})"

    def _deploy_serve(self, record: dict, env: dict, ports: pstate.RayPorts, temp_dir: Path) -> None:
        config = pstate.patch_serve_config(
            pstate.SERVE_TEMPLATE.read_text(),
            host=self.host,
            port=self.port,
            state_dir=self.state_dir,
            heartbeat_interval_s=self.heartbeat_s,
            settings=self.settings,
        )
        if self.shared_database:
            config = pstate.every_node_serve(config, api_replicas=self.api_replicas)
        secret_files.write_secret_file(self.layout.serve_deploy_yaml, pstate.dump_serve_config(config))
        cmd = [
            *pstate.venv_script("serve"),
            "deploy",
            str(self.layout.serve_deploy_yaml),
            "--address",
            f"http://127.0.0.1:{ports.dashboard}",
        ]
        _wait_for(
            f"the Ray dashboard on port {ports.dashboard}",
            lambda: _dashboard_answers(ports.dashboard, self.layout.ray_auth_token),
            DASHBOARD_TIMEOUT_S,
            on_timeout=lambda: _tail(temp_dir / "session_latest" / "logs" / "dashboard.log"),
        )
        logger.info("deploying the Serve app")
        with open(self.layout.serve_log, "ab") as log:
            try:
                rc = subprocess.run(
                    cmd,
                    env=env,
                    cwd=self.state_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=SERVE_DEPLOY_TIMEOUT_S,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0:
            raise pstate.PlatformError(
                f"`serve deploy` failed ({rc}); see {self.layout.serve_log}", details=_tail(self.layout.serve_log)
            )
        api_url = platform_status.api_url(record)
        logger.info("waiting for %s/healthz", api_url)

        def ready() -> bool:
            if platform_status.healthy(api_url):
                return True
            failed = _serve_app_failure(ports.dashboard, self.layout.ray_auth_token)
            if failed:
                raise pstate.PlatformError(
                    f"the Serve app failed to deploy: {last_error_line(failed)}",
                    details=failed + "\n" + self._serve_logs_tail(temp_dir),
                )
            return False

        _wait_for(
            f"{api_url}/healthz",
            ready,
            HEALTHZ_TIMEOUT_S,
            interval_s=1.0,
            on_timeout=lambda: self._serve_logs_tail(temp_dir),
        )

    def _login_admin(self, api: dcluster.Client) -> None:
        path = self.layout.admin_credentials_json
        creds = _wait_for(
            str(path), lambda: pstate.read_json(path) if path.exists() else None, ADMIN_CREDENTIALS_TIMEOUT_S
        )
        try:
            api.login(creds["username"], creds["password"])
        except dcluster.ApiError as exc:
            raise pstate.PlatformError(f"the admin credentials in {path} are refused ({exc})") from None

    def _ensure_account(self, api: dcluster.Client, store: pstate.CredentialStore, username: str, role: str) -> bool:
        """True when the account is new on this platform's database."""
        password, created = store.get_or_create(username, role)
        try:
            api.create_account(username, password, role)
            logger.info("created %s account %s", role, username)
            return True
        except dcluster.ApiError as exc:
            if exc.status_code != 409:
                raise pstate.PlatformError(f"could not create account {username}: {exc}") from None
            if created:
                raise pstate.PlatformError(
                    f"account {username} already exists but its password is not in {store.path}; "
                    f"use another --state-dir, or restore that file"
                ) from None
            # Exists from an earlier `up`: the saved password is the one the agents will use.
            return False

    def _ensure_accounts(self, api: dcluster.Client) -> None:
        store = pstate.CredentialStore(self.layout.credentials_json)
        store.set_url(platform_status.api_url({"host": self.host, "port": self.port}))
        for i in range(1, self.providers + 1):
            if self._ensure_account(api, store, pstate.provider_username(i), domain.Role.PROVIDER.value):
                # A new account on this database: an agent key kept from an earlier platform is unknown
                # here, so that agent enrolls again with the password instead of stopping at a 401.
                self._enroll_anew.add(i)
        self._ensure_account(api, store, pstate.BUYER_USERNAME, domain.Role.BUYER.value)

    def _start_agents(self, record: dict) -> None:
        store = pstate.CredentialStore(self.layout.credentials_json)
        for i in range(1, self.providers + 1):
            username = pstate.provider_username(i)
            agent_dir = self.layout.agent_dir(i)
            secret_files.ensure_private_dir(agent_dir.parent)
            secret_files.ensure_private_dir(agent_dir)
            env = pstate.agent_env(os.environ, home=agent_dir)
            password_file = agent_dir / "password"
            secret_files.write_secret_file(password_file, store.password(username) + "\n")
            cmd = [
                *pstate.venv_script("dcluster-agent"),
                "--platform-url",
                platform_status.api_url(record),
                "--username",
                username,
                "--password-file",
                str(password_file),
                "--state-dir",
                str(agent_dir),
                "--name",
                pstate.agent_name(i),
            ]
            if i in self._enroll_anew:
                cmd += ["--enroll"]
            if self.agent_gpus is not None:
                cmd += ["--gpus", str(self.agent_gpus)]
            if self.agent_cpus is not None:
                cmd += ["--cpus", str(self.agent_cpus)]
            if self.agent_runtime is not None:
                cmd += ["--runtime", self.agent_runtime]
                if self.agent_runtime == domain.UNSANDBOXED:
                    cmd += [domain.UNSANDBOXED_FLAG]
            tag = pstate.agent_owner_tag(record["owner_tag"], i)
            proc = procs.spawn(cmd, env=env, cwd=agent_dir, log_path=self.layout.agent_log(i), owner_tag=tag)
            entry = {
                "index": i,
                "username": username,
                "name": pstate.agent_name(i),
                "owner_tag": tag,
                "pid": proc.pid,
                "log": str(self.layout.agent_log(i)),
                "state_dir": str(agent_dir),
            }
            rec = platform_status.proc_record(psutil.Process(proc.pid)) if procs.pid_alive(proc.pid) else None
            entry["create_time"] = rec["create_time"] if rec else None
            record["agents"].append(entry)
            self._save(record)
        if self.providers:
            logger.info("started %d local agents", self.providers)

    def _wait_for_machines(self, api: dcluster.Client, since: float) -> None:
        wanted = {pstate.provider_username(i) for i in range(1, self.providers + 1)}
        if not wanted:
            return
        since -= 1.0  # same machine, same clock; a little slack for rounding

        def all_online() -> bool:
            try:
                machines = api.list_machines()
            except dcluster.ClientError as exc:
                logger.debug("list_machines: %s", exc)
                return False
            # Heard from since the agents started: not a stale "online" left by a crashed platform.
            online = {
                m.get("provider")
                for m in machines
                if m.get("status") == "online" and (m.get("last_heartbeat") or 0) >= since
            }
            return wanted <= online

        def agent_logs() -> str:
            return "\n".join(
                f"--- {self.layout.agent_log(i)} ---\n{_tail(self.layout.agent_log(i), 10)}"
                for i in range(1, self.providers + 1)
            )

        logger.info("waiting for %d machines to come online", len(wanted))
        _wait_for(
            f"{len(wanted)} local machines to come online",
            all_online,
            MACHINES_TIMEOUT_S,
            interval_s=1.0,
            on_timeout=agent_logs,
        )

    def _result(self, record: dict, *, already_running: bool, timings: dict) -> UpResult:
        api_url = platform_status.api_url(record)
        return UpResult(
            already_running=already_running,
            api_url=api_url,
            docs_url=f"{api_url}/docs",
            state_dir=self.state_dir,
            admin_credentials=self.layout.admin_credentials_json,
            credentials=self.layout.credentials_json,
            agent_logs=[Path(a["log"]) for a in record.get("agents", [])],
            ray_dashboard_url=f"http://127.0.0.1:{record['ray_ports']['dashboard']}",
            timings_s=timings,
        )

    # --- down ----------------------------------------------------------------------------

    def down(self) -> dict:
        """Stop the agents (graceful leave first), then every platform Ray process; keep all files."""
        t0 = time.monotonic()
        if not self.layout.platform_json.exists():
            return {"stopped": False, "message": f"no platform recorded in {self.state_dir}"}
        with pstate.state_lock(self.state_dir):
            record = self._load() or {}
            tag = record.get("owner_tag")
            if not tag:
                return {"stopped": False, "message": f"{self.layout.platform_json} names no platform"}
            agents = record.get("agents", [])
            self._leave_agents(agents)
            summaries = [procs.stop_owned(a["owner_tag"], grace_s=STOP_GRACE_S) for a in agents]
            logger.info("stopping the Ray head (owner tag %s)", tag)
            summaries.append(procs.stop_owned(tag, grace_s=STOP_GRACE_S))
            left = [
                pid
                for t in [*(a["owner_tag"] for a in agents), tag]
                for pid in (p.pid for p in procs.owned_processes(t))
            ]
            record["status"] = pstate.STATUS_STOPPED if not left else pstate.STATUS_FAILED
            record["stopped_at"] = time.time()
            record["head_processes"] = []
            self._save(record)
        result = {
            "stopped": not left,
            "owner_tag": tag,
            "processes_stopped": sum(len(s.terminated) for s in summaries),
            "processes_killed": sum(len(s.killed) for s in summaries),
            "left_running": left,
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
        if left:
            result["message"] = f"processes still running after down: {left}"
        return result

    def _leave_agents(self, agents: list[dict]) -> None:
        """SIGTERM each agent's root so it can tell the platform it leaves, and give it a moment."""
        roots = []
        for agent in agents:
            if agent.get("pid") and procs.pid_alive(agent["pid"], agent.get("create_time")):
                try:
                    proc = psutil.Process(agent["pid"])
                    proc.terminate()
                    roots.append(proc)
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass
        if roots:
            logger.info("asking %d agents to leave", len(roots))
            procs.wait_gone(roots, AGENT_LEAVE_GRACE_S)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict:
        """What is recorded, what is alive, and what the API says (a dict; `dcluster status` prints it)."""
        return platform_status.collect(self.layout)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
