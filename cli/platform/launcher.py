"""PlatformLauncher: start, stop and inspect the persistent platform (Ray head + Serve app + local agents)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from pathlib import Path

import dcluster
from cli.platform import accounts, local_agents, probes, public, ray_node, serve_deploy, state, up_result
from cli.platform.errors import PlatformError
from dcl_core import ray_ports, secret_files
from dcluster import tls as client_tls
from worker import procs

logger = logging.getLogger(__name__)

ROLE_HEAD, ROLE_MEMBER = "head", "member"


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
        public_url: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        insecure: bool = False,
    ):
        if providers < 0:
            raise PlatformError("--providers must be >= 0")
        if providers and not client_tls.is_loopback_host(host):
            raise PlatformError(
                f"--providers runs provider agents on this machine, beside the platform and its secrets; that is "
                f"for a platform only this machine can reach. With --host {host} the API is reachable from "
                "elsewhere: run `dcluster-agent` on the providers' own machines instead, or use --host 127.0.0.1"
            )
        if not 1 <= port <= 65535:
            raise PlatformError(f"--port {port} is not a TCP port")
        self.state_dir = Path(state_dir or state.default_state_dir()).expanduser().absolute()
        self.layout = state.Layout(self.state_dir)
        self.port = port
        self.host = host
        self.providers = providers
        self.public_url = public.check_url(public_url) if public_url else None
        self.tls_cert, self.tls_key, self.insecure = tls_cert, tls_key, insecure
        self.heartbeat_s = heartbeat_s
        self.agent_gpus = agent_gpus
        self.agent_cpus = agent_cpus
        self.agent_runtime = agent_runtime  # None: each agent's default (docker where a daemon answers, else bwrap)
        self.settings = dict(settings or {})  # more PlatformSettings fields for the Serve app
        # GCS fault tolerance: the head's GCS keeps its tables in this Redis, so a restarted head recovers them.
        self.redis = redis
        if redis is not None:
            ray_node.redis_address(redis)
        # Another platform node: the head's GCS address (host:port) it joins.
        self.join = join
        if join is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+:[0-9]{1,5}", join):
            raise PlatformError(
                f"--join takes the head's GCS address HOST:PORT (got {join!r}); `dcluster status` on the head prints it"
            )
        if join is not None and (providers or redis or self.settings):
            raise PlatformError(
                "--join adds a node to a running platform: its settings (--database, --redis, "
                "--providers) are the head's"
            )
        self.shared_database = bool(self.settings.get("database"))
        if api_replicas is not None and not self.shared_database:
            raise PlatformError("--api-replicas needs --database: on SQLite the API runs beside the head's database")
        if api_replicas is not None and not 1 <= api_replicas <= 64:
            raise PlatformError("--api-replicas must be between 1 and 64")
        # On PostgreSQL: the API's replicas one a node, each listening on its node (set it to the number of nodes).
        self.api_replicas = api_replicas or 2

    # --- up ------------------------------------------------------------------------------

    def up(self) -> up_result.UpResult:
        secret_files.ensure_private_dir(self.state_dir)
        with state.state_lock(self.state_dir):
            record = self.layout.load()
            if probes.is_running(record):
                return self._already_running(record)
            if record and record.get("owner_tag"):
                self._stop_leftovers(record)
            if self.join:
                return self._join()
            return self._start(recovering(record, self.redis), recorded=record)

    def _already_running(self, record: dict) -> up_result.UpResult:
        logger.info("platform already running (owner tag %s)", record["owner_tag"])
        if record.get("host") != self.host or record.get("port") != self.port:
            logger.warning(
                "it listens on %s:%s; run `dcluster down` first to change that", record.get("host"), record.get("port")
            )
        if self.public_url and self.public_url != state.public_url(record):
            logger.warning("it is reached at %s; run `dcluster down` first to change that", state.public_url(record))
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
            summary = procs.stop_owned(tag, grace_s=ray_node.STOP_GRACE_S)
            if summary.terminated:
                logger.info("stopped %d leftover processes of %s", len(summary.terminated), tag)

    def _new_record(self, role: str, ports: ray_ports.RayPorts, temp_dir: Path) -> dict:
        return {
            "version": 1,
            "role": role,
            "status": state.STATUS_STARTING,
            "owner_tag": state.new_owner_tag(),
            "host": self.host,
            "port": self.port,
            "temp_dir": str(temp_dir),
            "ray_ports": ports.to_dict(),
            "head_processes": [],
            "agents": [],
            "started_at": time.time(),
        }

    def _failed(self, record: dict, exc: BaseException) -> None:
        record["status"] = state.STATUS_FAILED
        record["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
        self.layout.save(record)
        logger.info("start failed; stopping what was started")
        self._stop_leftovers(record)

    def _start(self, previous: dict | None = None, *, recorded: dict | None = None) -> up_result.UpResult:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        # A restarted head's HTTP port may be served meanwhile by the proxy of another platform node on this machine.
        if previous is None and not procs.port_is_free(self.port, self.host):
            raise PlatformError(
                f"port {self.port} on {self.host} is already in use; "
                f"choose another with --port, or stop what listens there"
            )
        if not serve_deploy.SERVE_TEMPLATE.exists():
            raise PlatformError(f"{serve_deploy.SERVE_TEMPLATE} not found: the Serve config of the platform is missing")
        secret_files.ensure_private_dir(self.layout.home)
        secret_files.ensure_private_dir(self.layout.logs)
        # A restarted head keeps only its GCS port (the other nodes reconnect to it); the rest are picked afresh,
        # since another node on this machine may hold one of the old ones by now.
        kept_gcs = ray_ports.RayPorts.from_dict(previous["ray_ports"]).gcs if previous is not None else None
        if kept_gcs is not None:
            logger.info("restarting the head on Redis %s: the GCS comes back at 127.0.0.1:%d", self.redis, kept_gcs)
        ports = self._allocate_ports(kept_gcs)
        temp_dir = state.ray_temp_dir(self.state_dir)
        secret_files.ensure_private_dir(temp_dir)
        if previous is not None:
            # The dead head's address file: with a joined node on this machine whose processes name that GCS
            # address, `ray start` would take the head for still running and refuse.
            (temp_dir / ray_node.RAY_ADDRESS_FILE).unlink(missing_ok=True)
        endpoint = public.prepare(
            self.layout,
            requested_url=self.public_url,
            recorded=recorded,
            template_url=serve_deploy.template_api_url(serve_deploy.SERVE_TEMPLATE.read_text()),
            host=self.host,
            port=self.port,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            insecure=self.insecure,
        )
        record = self._new_record(ROLE_HEAD, ports, temp_dir)
        record.update(
            **endpoint.to_record(),
            redis=self.redis,
            shared_database=self.shared_database,
            providers=self.providers,
            heartbeat_s=self.heartbeat_s,
            agent_gpus=self.agent_gpus,
            agent_cpus=self.agent_cpus,
        )
        self.layout.save(record)

        def start_head(ports: ray_ports.RayPorts) -> dict:
            self._record_ports(record, ports)
            env = self._node_env(ports)
            if self.redis:
                env.update(ray_node.gcs_fault_tolerance_env(os.environ, redis_url=self.redis, state_dir=self.state_dir))
            record["head_processes"] = ray_node.start_node(
                layout=self.layout,
                owner_tag=record["owner_tag"],
                env=env,
                command=lambda: ray_node.ray_head_command(ports=ports, temp_dir=temp_dir),
                ports=ports,
                core_processes=ray_node.HEAD_CORE_PROCESSES,
                role=ROLE_HEAD,
            )
            return env

        try:
            ports, env = ray_node.on_free_ports(
                ports, start_head, repick=lambda: self._allocate_ports(kept_gcs), kept_gcs=kept_gcs
            )
            self.layout.save(record)
            timings["ray_head"] = round(time.monotonic() - t0, 1)
            t1 = time.monotonic()
            self._deploy_serve(record, env, ports, temp_dir, public.serve_settings(endpoint))
            timings["serve"] = round(time.monotonic() - t1, 1)
            with dcluster.Client(state.api_url(record), trust=state.local_trust(record)) as client:
                accounts.login_admin(client, self.layout)
                made_now = accounts.ensure_accounts(
                    client,
                    self.layout,
                    providers=self.providers,
                    api_url=state.public_url(record),
                    fingerprint=state.tls_fingerprint(record),
                )
                t2, agents_started = time.monotonic(), time.time()
                local_agents.start_agents(
                    record,
                    self.layout,
                    os.environ,
                    enroll_anew=made_now,
                    gpus=self.agent_gpus,
                    cpus=self.agent_cpus,
                    runtime=self.agent_runtime,
                )
                local_agents.wait_for_machines(
                    client, self.layout, agents=record["agents"], providers=self.providers, since=agents_started
                )
                timings["agents"] = round(time.monotonic() - t2, 1)
        except BaseException as exc:
            self._failed(record, exc)
            raise
        record["status"] = state.STATUS_RUNNING
        record.pop("error", None)
        self.layout.save(record)
        timings["total"] = round(time.monotonic() - t0, 1)
        return self._result(record, already_running=False, timings=timings)

    def _allocate_ports(self, kept_gcs: int | None) -> ray_ports.RayPorts:
        """Every port of a new Ray node, free right now; kept_gcs: the GCS port a restarted head must keep."""
        if kept_gcs is None:
            return procs.allocate_ray_ports(exclude=(self.port,))
        return dataclasses.replace(procs.allocate_ray_ports(exclude=(self.port, kept_gcs)), gcs=kept_gcs)

    def _record_ports(self, record: dict, ports: ray_ports.RayPorts) -> None:
        if record["ray_ports"] != ports.to_dict():
            record["ray_ports"] = ports.to_dict()
            self.layout.save(record)

    def _deploy_serve(
        self, record: dict, env: dict, ports: ray_ports.RayPorts, temp_dir: Path, endpoint_settings: dict
    ) -> None:
        config = serve_deploy.patch_serve_config(
            serve_deploy.SERVE_TEMPLATE.read_text(),
            host=self.host,
            port=self.port,
            state_dir=self.state_dir,
            heartbeat_interval_s=self.heartbeat_s,
            settings={**self.settings, **endpoint_settings},
        )
        if self.shared_database:
            config = serve_deploy.every_node_serve(config, api_replicas=self.api_replicas)
        serve_deploy.deploy(
            config,
            layout=self.layout,
            env=env,
            ports=ports,
            temp_dir=temp_dir,
            api_url=state.api_url(record),
            trust=state.local_trust(record),
        )

    def _node_env(self, ports: ray_ports.RayPorts) -> dict:
        env = ray_node.ray_env(os.environ, layout=self.layout, ports=ports)
        if self.shared_database or self.join:
            env.update(ray_node.secret_key_env(os.environ, self.layout))
        return env

    def _join(self) -> up_result.UpResult:
        """Another platform node: a raylet of its own (ports, temp dir, state dir) in the head's Ray cluster."""
        t0 = time.monotonic()
        if not self.layout.ray_auth_token.exists():
            raise PlatformError(
                f"no {self.layout.ray_auth_token}: copy the head's state dir's ray_auth_token "
                "there (chmod 600); only holders of the platform cluster's token may join it"
            )
        keyed = any(os.environ.get(k) for k in (secret_files.SECRET_KEY_ENV, secret_files.SECRET_KEY_FILE_ENV))
        if not keyed and not self.layout.secret_key.exists():
            raise PlatformError(
                f"no secret key: set {secret_files.SECRET_KEY_ENV} or {secret_files.SECRET_KEY_FILE_ENV} "
                f"as on the head, or copy the head's secret.key to {self.layout.secret_key} (chmod 600)"
            )
        secret_files.ensure_private_dir(self.layout.home)
        secret_files.ensure_private_dir(self.layout.logs)
        ports = self._allocate_ports(kept_gcs=None)
        temp_dir = state.ray_temp_dir(self.state_dir)
        secret_files.ensure_private_dir(temp_dir)
        record = self._new_record(ROLE_MEMBER, ports, temp_dir)
        record.update(join=self.join, providers=0)
        self.layout.save(record)
        join = self.join

        def start_member(ports: ray_ports.RayPorts) -> None:
            self._record_ports(record, ports)
            env = {**self._node_env(ports), ray_node.GCS_RECONNECT_ENV: str(ray_node.MEMBER_GCS_RECONNECT_S)}
            record["head_processes"] = ray_node.start_node(
                layout=self.layout,
                owner_tag=record["owner_tag"],
                env=env,
                command=lambda: ray_node.ray_member_command(head_address=join, ports=ports, temp_dir=temp_dir),
                ports=ports,
                core_processes=ray_node.MEMBER_CORE_PROCESSES,
                role=ROLE_MEMBER,
            )

        try:
            ray_node.on_free_ports(ports, start_member, repick=lambda: self._allocate_ports(None), kept_gcs=None)
            self.layout.save(record)
        except BaseException as exc:
            self._failed(record, exc)
            raise
        record["status"] = state.STATUS_RUNNING
        self.layout.save(record)
        return self._result(record, already_running=False, timings={"total": round(time.monotonic() - t0, 1)})

    def _result(self, record: dict, *, already_running: bool, timings: dict) -> up_result.UpResult:
        return up_result.of(record, self.layout, already_running=already_running, timings=timings)

    # --- down ----------------------------------------------------------------------------

    def down(self) -> dict:
        """Stop the agents (graceful leave first), then every platform Ray process; keep all files."""
        t0 = time.monotonic()
        if not self.layout.platform_json.exists():
            return {"stopped": False, "message": f"no platform recorded in {self.state_dir}"}
        with state.state_lock(self.state_dir):
            record = self.layout.load() or {}
            tag = record.get("owner_tag")
            if not tag:
                return {"stopped": False, "message": f"{self.layout.platform_json} names no platform"}
            agents = record.get("agents", [])
            local_agents.leave_agents(agents)
            summaries = [procs.stop_owned(a["owner_tag"], grace_s=ray_node.STOP_GRACE_S) for a in agents]
            logger.info("stopping the Ray head (owner tag %s)", tag)
            summaries.append(procs.stop_owned(tag, grace_s=ray_node.STOP_GRACE_S))
            left = [
                pid
                for t in [*(a["owner_tag"] for a in agents), tag]
                for pid in (p.pid for p in procs.owned_processes(t))
            ]
            record["status"] = state.STATUS_STOPPED if not left else state.STATUS_FAILED
            record["stopped_at"] = time.time()
            record["head_processes"] = []
            self.layout.save(record)
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

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict:
        """What is recorded, what is alive, and what the API says (a dict; `dcluster status` prints it)."""
        return probes.collect(self.layout)


def recovering(record: dict | None, redis: str | None) -> dict | None:
    """The previous head's record when a head restarts on the same Redis: its GCS must come back at the
    same address (the other nodes reconnect to it), so its ports are taken again. None: a fresh start."""
    if not redis or not record or record.get("redis") != redis or not record.get("ray_ports"):
        return None
    if record.get("role", ROLE_HEAD) != ROLE_HEAD:
        return None
    return record
