"""The platform's state dir: where each file lives, the recorded platform.json, one `up`/`down` at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dcluster
from cli.platform.errors import PlatformError
from dcl_core import ids, secret_files

# Ray's unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store ...) must fit in
# 107 bytes; a temp dir longer than this leaves too little room.
MAX_TEMP_DIR_LEN = 40

# platform.json's "status".
STATUS_STARTING = "starting"
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"
STATUS_FAILED = "failed"


def default_state_dir() -> Path:
    env = os.environ.get("DCLUSTER_STATE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".dcluster"


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
    def tls_dir(self) -> Path:
        """The platform's own certificate authority and server certificate (keys 0600)."""
        return self.state_dir / "tls"

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

    def load(self) -> dict | None:
        """The recorded platform (platform.json), None when there is none."""
        return read_json(self.platform_json)

    def save(self, record: dict) -> None:
        write_json(self.platform_json, record)


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


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to host."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def api_url(record: dict) -> str:
    """Where a client on this machine reaches the recorded platform's API."""
    scheme = "https" if record.get("tls") else "http"
    return f"{scheme}://{connect_host(record['host'])}:{record['port']}"


def public_url(record: dict) -> str:
    """The one address the recorded platform hands out (agents, sub-clusters, connection details, logins)."""
    return str(record.get("public_url") or api_url(record))


def tls_fingerprint(record: dict) -> str | None:
    """The SHA-256 fingerprint of the certificate clients pin, when the API serves TLS."""
    tls = record.get("tls")
    return str(tls["fingerprint"]) if tls else None


def local_trust(record: dict) -> dcluster.Trust:
    """How `up` and `status` trust the API they reach on this machine: the pinned certificate, and the public
    host's name where an operator's certificate does not name this machine's loopback address."""
    tls = record.get("tls")
    if not tls:
        return dcluster.Trust()
    ca_pem = Path(tls["ca_file"]).read_text()
    server_name = None if tls.get("own_ca") else urlsplit(public_url(record)).hostname
    return dcluster.Trust(ca_pem=ca_pem, server_name=server_name)
