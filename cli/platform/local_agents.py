"""The provider agents `up --providers N` runs on this machine: their environment, starting, awaiting, stopping them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import psutil

import dcluster
from cli.platform import accounts, install, log_tail, ray_node, state, waiting
from cli.platform.errors import PlatformError
from dcl_core import domain, protocol, secret_files
from worker import procs

logger = logging.getLogger(__name__)

MACHINES_TIMEOUT_S = 60.0
LEAVE_GRACE_S = 10.0

# What a local agent keeps of the platform's environment: nothing that could carry a platform secret
# (DCLUSTER_JWT_SECRET, the platform cluster's Ray token, the user's HOME with its credentials).
_AGENT_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "DOCKER_HOST")


def agent_env(base: Mapping[str, str], *, home: Path) -> dict[str, str]:
    """A local agent runs like a provider's would, apart from the platform: a few harmless variables, its own HOME."""
    env = {k: v for k, v in base.items() if k in _AGENT_ENV_KEEP}
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def agent_command(
    *,
    api_url: str,
    index: int,
    password_file: Path,
    agent_dir: Path,
    enroll: bool,
    gpus: int | None,
    cpus: int | None,
    runtime: str | None,
    fingerprint: str | None = None,
    insecure: bool = False,
) -> list[str]:
    """The agent's command line; api_url is the platform's public URL, and fingerprint the certificate it pins."""
    cmd = [
        *install.venv_script("dcluster-agent"),
        "--platform-url",
        api_url,
        "--username",
        accounts.provider_username(index),
        "--password-file",
        str(password_file),
        "--state-dir",
        str(agent_dir),
        "--name",
        accounts.agent_name(index),
        # The local demo's machines are free; a provider's agent must name its prices.
        "--price-per-gpu-hour",
        "0",
        "--price-per-cpu-hour",
        "0",
    ]
    if enroll:
        cmd += ["--enroll"]
    if fingerprint is not None:
        cmd += ["--fingerprint", fingerprint]
    if insecure:
        cmd += ["--insecure"]
    if gpus is not None:
        cmd += ["--gpus", str(gpus)]
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    if runtime is not None:
        cmd += ["--runtime", runtime]
        if runtime == domain.UNSANDBOXED:
            cmd += [domain.UNSANDBOXED_FLAG]
    return cmd


def start_agents(
    record: dict,
    layout: state.Layout,
    base_env: Mapping[str, str],
    *,
    enroll_anew: set[int],
    gpus: int | None,
    cpus: int | None,
    runtime: str | None,
) -> None:
    """Start agents 1..record["providers"], each recorded in record["agents"] (and saved) as it starts.

    enroll_anew: agents whose provider account is new on this database: a key kept from an earlier
    platform is unknown here, so they enroll again with the password instead of stopping at a 401.
    """
    store = accounts.CredentialStore(layout.credentials_json)
    providers = record["providers"]
    for i in range(1, providers + 1):
        username = accounts.provider_username(i)
        agent_dir = layout.agent_dir(i)
        secret_files.ensure_private_dir(agent_dir.parent)
        secret_files.ensure_private_dir(agent_dir)
        env = agent_env(base_env, home=agent_dir)
        password_file = agent_dir / "password"
        secret_files.write_secret_file(password_file, store.password(username) + "\n")
        cmd = agent_command(
            api_url=state.public_url(record),
            fingerprint=state.tls_fingerprint(record),
            insecure=bool(record.get("insecure")),
            index=i,
            password_file=password_file,
            agent_dir=agent_dir,
            enroll=i in enroll_anew,
            gpus=gpus,
            cpus=cpus,
            runtime=runtime,
        )
        tag = state.agent_owner_tag(record["owner_tag"], i)
        proc = procs.spawn(cmd, env=env, cwd=agent_dir, log_path=layout.agent_log(i), owner_tag=tag)
        entry = {
            "index": i,
            "username": username,
            "name": accounts.agent_name(i),
            "owner_tag": tag,
            "pid": proc.pid,
            "log": str(layout.agent_log(i)),
            "state_dir": str(agent_dir),
        }
        rec = ray_node.proc_record(psutil.Process(proc.pid)) if procs.pid_alive(proc.pid) else None
        entry["create_time"] = rec["create_time"] if rec else None
        record["agents"].append(entry)
        layout.save(record)
    if providers:
        logger.info("started %d local agents", providers)


def exited_agent_error(agents: list[dict], layout: state.Layout) -> PlatformError | None:
    """The first local agent that is no longer running, as an error whose first line is its own reason (a
    missing sandbox runtime, a refused enrollment) and whose details are its log's tail."""
    for agent in agents:
        if not procs.pid_alive(agent["pid"], agent.get("create_time")):
            log = layout.agent_log(agent["index"])
            return PlatformError(
                f"local agent {agent['index']} ({agent['name']}) exited: {log_tail.last_reason(log)}",
                details=f"--- {log} ---\n{log_tail.tail(log, 20)}",
            )
    return None


def wait_for_machines(
    client: dcluster.Client, layout: state.Layout, *, agents: list[dict], providers: int, since: float
) -> None:
    """Until every local agent's machine is online, heard from since the agents started; an agent that
    exits meanwhile ends the wait at once with its reason."""
    wanted = {accounts.provider_username(i) for i in range(1, providers + 1)}
    if not wanted:
        return
    since -= 1.0  # same machine, same clock; a little slack for rounding

    def all_online() -> bool:
        exited = exited_agent_error(agents, layout)
        if exited is not None:
            raise exited
        try:
            machines = client.list_machines()
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
            f"--- {layout.agent_log(i)} ---\n{log_tail.tail(layout.agent_log(i), 10)}" for i in range(1, providers + 1)
        )

    logger.info("waiting for %d machines to come online", len(wanted))
    waiting.wait_for(
        f"{len(wanted)} local machines to come online",
        all_online,
        MACHINES_TIMEOUT_S,
        interval_s=1.0,
        on_timeout=agent_logs,
    )


def leave_agents(agents: list[dict]) -> None:
    """Send each agent the leave signal (it closes its leases and tells the platform it leaves: SIGTERM would
    only stop it for a restart, its leases running on), and give it a moment."""
    roots = []
    for agent in agents:
        if agent.get("pid") and procs.pid_alive(agent["pid"], agent.get("create_time")):
            try:
                proc = psutil.Process(agent["pid"])
                proc.send_signal(protocol.AGENT_LEAVE_SIGNAL)
                roots.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
    if roots:
        logger.info("asking %d agents to leave", len(roots))
        procs.wait_gone(roots, LEAVE_GRACE_S)
