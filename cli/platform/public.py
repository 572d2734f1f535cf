"""The platform's public address (`up --public-url`) and the TLS it serves there: chosen once, kept in
platform.json, so `status`, `down` and a later `up` use the same."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import urlsplit

import dcluster
from cli.platform import state, tls
from cli.platform.errors import PlatformError
from dcluster import tls as client_tls

# The platform settings' api_url: scheme, host and port, no path.
_URL_RE = re.compile(r"https?://[^\s/?#]+(:[0-9]+)?/?")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str  # what every client, agent and sub-cluster is given
    tls: tls.TlsFiles | None  # None: plain HTTP
    chosen: bool = False  # named by the operator (flag, serve.yaml), so kept for later `up`s; else the local address
    insecure: bool = False  # plain HTTP to other machines, accepted by the operator

    def to_record(self) -> dict:
        return {
            "public_url": self.url if self.chosen else None,
            "tls": self.tls.to_record() if self.tls else None,
            "insecure": self.insecure,
        }


def check_url(url: str) -> str:
    """http(s)://HOST[:PORT] with no path; PlatformError naming the form otherwise."""
    url = url.strip()
    parts = urlsplit(url)
    if not _URL_RE.fullmatch(url) or not parts.hostname:
        raise PlatformError(f"--public-url {url!r}: expected http(s)://HOST[:PORT] with no path")
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise PlatformError(f"--public-url {url!r}: the port is not a TCP port") from None
    return url.rstrip("/")


def chosen_url(*, requested: str | None, recorded: dict | None, template: str | None) -> str | None:
    """--public-url, else the one the last `up` was given, else serve.yaml's api_url; None: the local address
    (never kept: a later `up` on another port or host hands out that one)."""
    for candidate in (requested, (recorded or {}).get("public_url"), template):
        if candidate:
            return check_url(candidate)
    return None


def prepare(
    layout: state.Layout,
    *,
    requested_url: str | None,
    recorded: dict | None,
    template_url: str | None,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
) -> Endpoint:
    """The public URL and the TLS files the API serves: an operator's certificate when given, else the platform's
    own CA and a server certificate for the public host when the URL is https, else plain HTTP."""
    if (tls_cert is None) != (tls_key is None):
        raise PlatformError("--tls-cert and --tls-key go together: the certificate chain and its private key")
    recorded_tls = (recorded or {}).get("tls") or {}
    if tls_cert is None and recorded_tls and not recorded_tls.get("own_ca"):
        tls_cert, tls_key = Path(recorded_tls["certfile"]), Path(recorded_tls["keyfile"])  # the operator's, again
    chosen = chosen_url(requested=requested_url, recorded=recorded, template=template_url)
    url = chosen or f"{'https' if tls_cert else 'http'}://{state.connect_host(host)}:{port}"
    # A plain-HTTP URL the operator accepted with --insecure stays accepted when a later `up` reuses it.
    insecure = insecure or (requested_url is None and bool((recorded or {}).get("insecure")))
    parts = urlsplit(url)
    if parts.scheme == "http":
        if tls_cert is not None:
            raise PlatformError(
                f"an operator's certificate (--tls-cert, or the one the last `up` kept) serves https: "
                f"give an https:// --public-url, not {url}"
            )
        try:
            client_tls.refuse_plain_http(url, insecure=insecure)
        except dcluster.InsecureTransport as exc:
            raise PlatformError(str(exc)) from None
        return Endpoint(url, None, chosen is not None, insecure)
    tls_dir = tls.TlsDir(layout.tls_dir)
    if tls_cert is not None and tls_key is not None:
        return Endpoint(url, tls.operator_files(tls_cert, tls_key, tls_dir), chosen is not None, insecure)
    return Endpoint(url, tls.own_ca_files(tls_dir, str(parts.hostname)), chosen is not None, insecure)


def serve_settings(endpoint: Endpoint) -> dict:
    """The Serve app's args for this endpoint (PlatformSettings' api_url and tls_* fields)."""
    settings: dict = {"api_url": endpoint.url}
    if endpoint.tls is not None:
        settings.update(
            tls_certfile=str(endpoint.tls.certfile),
            tls_keyfile=str(endpoint.tls.keyfile),
            tls_ca_file=str(endpoint.tls.ca_file),
        )
    return settings
