"""The signed-in session on disk (session.json, 0600, in the CLI's config dir) and the client that uses it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import dcluster
from cli import output
from cli.exits import CliError, Exit
from dcl_core import secret_files
from dcluster import tls as client_tls

SESSION_FILE = "session.json"
# Seconds before a token's expiry at which the CLI stops using it (clock skew, slow calls).
EXPIRY_MARGIN_S = 5.0


@dataclasses.dataclass(frozen=True)
class Session:
    url: str
    username: str
    token: str
    expires_at: float
    role: str | None = None
    # The platform's certificate authority, pinned at login (its fingerprint checked then); None: plain HTTP
    # to this machine, or a certificate the system's trust store accepts.
    ca_pem: str | None = None
    insecure: bool = False  # plain HTTP to another machine, as the user asked at login

    def trust(self) -> dcluster.Trust:
        return dcluster.Trust(ca_pem=self.ca_pem)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at - EXPIRY_MARGIN_S

    def public(self) -> dict:
        """What may be printed: everything but the token."""
        return {
            "url": self.url,
            "username": self.username,
            "role": self.role,
            "expires_at": self.expires_at,
            "tls_fingerprint": self.trust().fingerprint,
        }


def config_dir() -> Path:
    """$DCLUSTER_CONFIG_DIR, else $XDG_CONFIG_HOME/dcluster, else ~/.config/dcluster."""
    if os.environ.get("DCLUSTER_CONFIG_DIR"):
        return Path(os.environ["DCLUSTER_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "dcluster"


def session_path() -> Path:
    return config_dir() / SESSION_FILE


def read_session() -> Session | None:
    """The saved session (expired or not), None when there is none."""
    path = session_path()
    try:
        data = json.loads(path.read_text())
        return Session(
            url=data["url"],
            username=data["username"],
            token=data["token"],
            expires_at=float(data["expires_at"]),
            role=data.get("role"),
            ca_pem=data.get("ca_pem"),
            insecure=bool(data.get("insecure", False)),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise CliError(f"{path} is not a valid session file; run `dcluster login` again", Exit.AUTH) from None


def save_session(session: Session) -> Path:
    secret_files.ensure_private_dir(config_dir())
    path = session_path()
    text = json.dumps(dataclasses.asdict(session), indent=2, sort_keys=True) + "\n"
    secret_files.write_secret_file(path, text)  # atomic, 0600 from the first byte
    return path


def current_session(now: float | None = None) -> Session:
    session = read_session()
    if session is None:
        raise CliError("not signed in; run `dcluster login --url URL --username NAME`", Exit.AUTH)
    if session.expired(time.time() if now is None else now):
        raise CliError(
            f"your session on {session.url} expired at {output.clock_time(session.expires_at)}; run `dcluster login`",
            Exit.AUTH,
        )
    return session


def new_client(base_url: str, trust: dcluster.Trust | None = None) -> dcluster.Client:
    """Every command's HTTP client (tests replace this factory with one on a mock transport)."""
    return dcluster.Client(base_url, trust=trust)


def signed_in_client() -> dcluster.Client:
    """A client with the saved session's token and pinned certificate; CliError(AUTH) when there is none or
    it expired."""
    session = current_session()
    client_tls.refuse_plain_http(session.url, insecure=session.insecure)
    client = new_client(session.url, session.trust())
    client.set_token(session.token)
    return client
