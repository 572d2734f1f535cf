"""The local platform's files and pure decisions: state dir layout, ports, Ray env and commands, Serve config."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from dcl_core import ids, protocol, secret_files
from dcl_core.ray_ports import WORKER_PORT_RANGE, RayPorts  # noqa: F401 (re-exported for the launcher)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_TEMPLATE = REPO_ROOT / "platform" / "serve.yaml"
SERVE_IMPORT_PATH = "serve_app.app:build_app"

# Ray's unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store ...) must fit in
# 107 bytes; a temp dir longer than this leaves too little room.
MAX_TEMP_DIR_LEN = 40
HEAD_NUM_CPUS = 2

# Variables of the caller's shell that would point the platform at another cluster or turn
# token auth on for it.
_ENV_DROP = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_NAMESPACE")

STATUS_STARTING = "starting"
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"
STATUS_FAILED = "failed"


class PlatformError(Exception):
    """An expected failure of `dcluster up/down/status`: a one-line message that says what to do,
    and optional details (a log tail) for the reader."""

    def __init__(self, message: str, *, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details


def default_state_dir() -> Path:
    env = os.environ.get("DCLUSTER_STATE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".dcluster"


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to host."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


# --- files ------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    secret_files.write_secret_file(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise PlatformError(f"{path} is not valid JSON ({exc}); fix or delete it") from None


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state dir."""
    secret_files.ensure_private_dir(state_dir)
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlatformError(f"another dcluster up/down is running on {state_dir}; wait for it") from None
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one platform lives."""

    state_dir: Path

    @property
    def platform_json(self) -> Path:
        return self.state_dir / "platform.json"

    @property
    def credentials_json(self) -> Path:
        return self.state_dir / "credentials.json"

    @property
    def admin_credentials_json(self) -> Path:
        return self.state_dir / "admin_credentials.json"

    @property
    def serve_deploy_yaml(self) -> Path:
        return self.state_dir / "serve.deploy.yaml"

    @property
    def ray_auth_token(self) -> Path:
        return self.state_dir / secret_files.RAY_AUTH_TOKEN_FILE

    @property
    def secret_key(self) -> Path:
        """The key that seals the platform's secrets in PostgreSQL, when the environment gives none (0600)."""
        return self.state_dir / "secret.key"

    @property
    def home(self) -> Path:
        return self.state_dir / "home"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def ray_log(self) -> Path:
        return self.logs / "ray-head.log"

    @property
    def serve_log(self) -> Path:
        return self.logs / "serve-deploy.log"

    @property
    def agents_root(self) -> Path:
        """Where local agents live: beside the state dir, never in it (its secrets are not theirs to read)."""
        return self.state_dir.parent / f"{self.state_dir.name}-providers"

    def agent_dir(self, index: int) -> Path:
        return self.agents_root / str(index)

    def agent_log(self, index: int) -> Path:
        return self.logs / f"agent-{index}.log"


def ensure_ray_auth_token(path: Path) -> Path:
    """The platform cluster's Ray auth token file (0600), made once."""
    if not path.exists():
        secret_files.write_secret_file(path, ids.new_ray_auth_token())
    return path


def ray_temp_dir(state_dir: Path) -> Path:
    """<state>/ray, or /tmp/dcl-<hash> when that path would make Ray's socket paths too long."""
    state_dir = Path(state_dir).absolute()
    preferred = state_dir / "ray"
    if len(str(preferred)) <= MAX_TEMP_DIR_LEN:
        return preferred
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]
    return Path("/tmp") / f"dcl-{digest}"


def new_owner_tag() -> str:
    return "dcl-platform-" + secrets.token_hex(4)


def agent_owner_tag(owner_tag: str, index: int) -> str:
    return f"{owner_tag}-agent-{index}"


def provider_username(index: int) -> str:
    return f"local-provider-{index}"


def agent_name(index: int) -> str:
    return f"local-{index}"


BUYER_USERNAME = "local-buyer"


# --- ports ------------------------------------------------------------------------------

# --- Ray environment and commands -------------------------------------------------------


def ray_env(base: Mapping[str, str], *, layout: Layout, ports: RayPorts) -> dict[str, str]:
    """The environment of every platform Ray process (DCLUSTER_OWNER is added by procs.spawn)."""
    env = {k: v for k, v in base.items() if k not in _ENV_DROP}
    env["HOME"] = str(layout.home)  # never the user's ~/.ray/auth_token
    # The platform cluster holds the database: only holders of its own token may join or submit.
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(ensure_ray_auth_token(layout.ray_auth_token))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(ports.env())
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    return env


# What a local agent keeps of the platform's environment: nothing that could carry a platform secret
# (DCLUSTER_JWT_SECRET, the platform cluster's Ray token, the user's HOME with its credentials).
_AGENT_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "DOCKER_HOST")


def agent_env(base: Mapping[str, str], *, home: Path) -> dict[str, str]:
    """A local agent runs like a provider's would, apart from the platform: a few harmless variables, its own HOME."""
    env = {k: v for k, v in base.items() if k in _AGENT_ENV_KEEP}
    env["HOME"] = str(home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    return env


def venv_script(name: str) -> list[str]:
    """A console script installed beside this interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise PlatformError(f"{path} not found; install the project into this interpreter (pip install -e .)")
    return [str(path)]


def ray_head_command(*, ports: RayPorts, temp_dir: Path, num_cpus: int = HEAD_NUM_CPUS) -> list[str]:
    return [
        *venv_script("ray"),
        "start",
        "--head",
        "--disable-usage-stats",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        *ports.start_flags(head=True, temp_dir=temp_dir),
        "--num-cpus",
        str(num_cpus),
    ]


def ray_member_command(
    *, head_address: str, ports: RayPorts, temp_dir: Path, num_cpus: int = HEAD_NUM_CPUS
) -> list[str]:
    """`ray start` of a second (third, ...) platform node; its label draws the control-plane actors off the head."""
    return [
        *venv_script("ray"),
        "start",
        "--address",
        head_address,
        "--disable-usage-stats",
        *ports.start_flags(head=False, temp_dir=temp_dir),
        "--num-cpus",
        str(num_cpus),
        "--labels",
        f"{protocol.PLATFORM_MEMBER_LABEL}={protocol.PLATFORM_MEMBER_VALUE}",
    ]


# --- a platform on several nodes ---------------------------------------------------------

REDIS_URL = re.compile(r"^redis://(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})/?$")
# Where `ray start --head` writes the GCS address of the last head it started (under its temp dir).
RAY_ADDRESS_FILE = "ray_current_cluster"
# How long the processes of a joined node wait for a lost head's GCS to come back before they exit (Ray's default
# is 60 s: too short for an operator, or a busy machine, to restart a head).
GCS_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
MEMBER_GCS_RECONNECT_S = 600

# Ray's GCS keeps its tables in external Redis under this namespace: one per platform (so several share a Redis).
REDIS_NAMESPACE_ENV = "RAY_external_storage_namespace"


def redis_address(url: str) -> str:
    """host:port of a redis:// URL (what RAY_REDIS_ADDRESS takes), or a PlatformError naming the form wanted."""
    match = REDIS_URL.match(url or "")
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise PlatformError(
            f"--redis takes redis://HOST:PORT (got {url!r}); give Redis's password, if any, in "
            "Ray's own settings rather than in the URL"
        )
    return f"{match['host']}:{match['port']}"


def redis_namespace(state_dir: Path) -> str:
    """The platform's namespace in Redis, the same on every restart of its head from this state dir."""
    return "dcluster-" + hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:12]


def gcs_fault_tolerance_env(base: Mapping[str, str], *, redis_url: str, state_dir: Path) -> dict[str, str]:
    """What the head's `ray start` needs so its GCS keeps its tables in Redis and a restarted head recovers them."""
    return {
        "RAY_REDIS_ADDRESS": redis_address(redis_url),
        REDIS_NAMESPACE_ENV: base.get(REDIS_NAMESPACE_ENV) or redis_namespace(state_dir),
    }


def secret_key_env(base: Mapping[str, str], layout: Layout) -> dict[str, str]:
    """The key that seals secrets in PostgreSQL, for every platform Ray process: the operator's (DCL_SECRET_KEY or
    DCL_SECRET_KEY_FILE), else a key file made once in the state dir (copy it to every other platform node)."""
    if base.get(secret_files.SECRET_KEY_ENV) or base.get(secret_files.SECRET_KEY_FILE_ENV):
        return {}
    if not layout.secret_key.exists():
        secret_files.write_secret_file(layout.secret_key, secret_files.new_secret_key() + "\n")
    return {secret_files.SECRET_KEY_FILE_ENV: str(layout.secret_key)}


def every_node_serve(config: dict, *, api_replicas: int) -> dict:
    """The API's replicas spread one a node: each listens on its node's API port itself (serve_app.listener),
    so every platform node answers the API without Serve's proxy."""
    for app in config.get("applications") or []:
        if app.get("import_path") != SERVE_IMPORT_PATH:
            continue
        deployments = app.setdefault("deployments", []) or []
        app["deployments"] = deployments
        api = next((d for d in deployments if d.get("name") == protocol.API_DEPLOYMENT), None)
        if api is None:
            api = {"name": protocol.API_DEPLOYMENT}
            deployments.append(api)
        api["num_replicas"] = int(api_replicas)
        api["max_replicas_per_node"] = 1
    return config


# --- Serve config -----------------------------------------------------------------------


def patch_serve_config(
    text: str,
    *,
    host: str,
    port: int,
    state_dir: Path,
    heartbeat_interval_s: float,
    api_url: str | None = None,
    settings: dict | None = None,
) -> dict:
    """The platform's Serve config with this machine's HTTP address and state dir filled in,
    and `settings` (more PlatformSettings fields) over the template's. The API replica listens on
    the address itself (serve_app.listener), so Serve's own HTTP proxy is off."""
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise PlatformError("the Serve config must be a YAML mapping")
    config["proxy_location"] = "Disabled"
    config.pop("http_options", None)
    apps = config.get("applications") or []
    if not apps:
        raise PlatformError("the Serve config has no applications")
    targets = [a for a in apps if a.get("import_path") == SERVE_IMPORT_PATH] or (apps if len(apps) == 1 else [])
    if not targets:
        raise PlatformError(f"no application with import_path {SERVE_IMPORT_PATH} in the Serve config")
    for app in targets:
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        args["state_dir"] = str(Path(state_dir).absolute())
        args["listen_host"] = host
        args["listen_port"] = int(port)
        args["heartbeat_interval_s"] = float(heartbeat_interval_s)
        # Where provider machines (agents, sub-cluster autoscalers) reach the API.
        args["api_url"] = api_url or f"http://{connect_host(host)}:{int(port)}"
        args.update(settings or {})
    return config


def dump_serve_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


# --- credentials of the local accounts --------------------------------------------------


class CredentialStore:
    """<state>/credentials.json (0600): the passwords of the accounts `up` created."""

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict:
        data = read_json(self.path) or {}
        data.setdefault("accounts", {})
        return data

    def password(self, username: str) -> str | None:
        entry = self._load()["accounts"].get(username)
        return entry.get("password") if entry else None

    def get_or_create(self, username: str, role: str) -> tuple[str, bool]:
        """(password, created): a saved password, or a new one saved before anyone uses it."""
        saved = self.password(username)
        if saved:
            return saved, False
        password = secrets.token_urlsafe(24)
        data = self._load()
        data["accounts"][username] = {"password": password, "role": role}
        write_json(self.path, data)
        return password, True

    def set_url(self, url: str) -> None:
        data = self._load()
        data["platform_url"] = url
        write_json(self.path, data)
