"""How a client trusts the platform: a pinned certificate authority (by its SHA-256 fingerprint), the system's
trust store, and plain HTTP only to this machine or when told so."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import socket
import ssl
from urllib.parse import urlsplit

import httpx

from dcl_core import api
from dcluster import errors

FINGERPRINT_PREFIX = "SHA256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
FETCH_TIMEOUT_S = 10.0


def fingerprint(pem: str) -> str:
    """SHA256:<64 hex> of the first certificate in pem (its DER form): what `openssl x509 -fingerprint -sha256`
    prints, without the colons."""
    return FINGERPRINT_PREFIX + hashlib.sha256(ssl.PEM_cert_to_DER_cert(first_certificate(pem))).hexdigest()


def der_fingerprint(der: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def first_certificate(pem: str) -> str:
    match = _PEM_CERT.search(pem)
    if match is None:
        raise ValueError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    return match.group(0) + "\n"


def last_certificate(pem: str) -> str:
    """The top of a chain file (leaf first): the certificate clients pin."""
    found = _PEM_CERT.findall(pem)
    if not found:
        raise ValueError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    return str(found[-1]) + "\n"


def parse_fingerprint(text: str) -> str:
    """SHA256:<hex>, case and colons as openssl prints them accepted; ValueError naming the form otherwise."""
    raw = text.strip()
    if raw.upper().startswith(FINGERPRINT_PREFIX):
        raw = raw[len(FINGERPRINT_PREFIX) :]
    digest = raw.replace(":", "").lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(
            f"{text!r} is not a certificate fingerprint: expected SHA256: and 64 hex digits "
            "(`dcluster up` and `dcluster status` on the platform print it)"
        )
    return FINGERPRINT_PREFIX + digest


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address only this machine reaches."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_plain_http(url: str, *, insecure: bool) -> None:
    """http:// to another machine sends passwords and tokens in clear: refused unless the user said --insecure."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InsecureTransport(f"{url!r} is not an http:// or https:// URL of the platform")
    if parts.scheme == "http" and not insecure and not is_loopback_host(parts.hostname):
        raise errors.InsecureTransport(
            f"{url} is plain HTTP to another machine: passwords and tokens would cross the network unencrypted. "
            "Use the platform's https:// URL, or pass --insecure if this network is yours alone"
        )


@dataclasses.dataclass(frozen=True)
class Trust:
    """What a client believes of the platform's certificate.

    ca_pem: the pinned certificate authority (its fingerprint was checked when it was pinned); the server's
    chain must end at it. None: the system's trust store. server_name: the name the certificate must carry,
    when the client reaches the server by another address (the platform's own calls on 127.0.0.1).
    """

    ca_pem: str | None = None
    server_name: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.ca_pem) if self.ca_pem else None

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's verify=: a context that trusts only the pinned CA, else True (the system store)."""
        if not self.ca_pem:
            return True
        context = ssl.create_default_context(cadata=self.ca_pem)
        # The pinned certificate may be an intermediate (an operator's chain): it anchors the chain by itself.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    def request_extensions(self) -> dict[str, str]:
        return {"sni_hostname": self.server_name} if self.server_name else {}


def fetch_ca(url: str, *, expected: str | None, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """The platform's CA certificate (PEM), fetched without trusting anything yet, then checked: its fingerprint
    must be `expected` (UntrustedPlatform naming both otherwise). expected=None is trust on first use."""
    ca_url = url.rstrip("/") + api.TLS_CA_PATH
    try:
        resp = httpx.get(ca_url, verify=False, timeout=timeout_s, trust_env=False)
    except httpx.TransportError as exc:
        raise errors.PlatformUnreachable(f"GET {ca_url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code == 404:
        raise errors.UntrustedPlatform(
            f"{url} publishes no certificate authority ({api.TLS_CA_PATH} answers 404): it is not a platform "
            "with TLS of its own; leave out the fingerprint to trust its certificate through the system's store"
        )
    if not resp.is_success:
        raise errors.ApiError(resp.status_code, f"GET {api.TLS_CA_PATH}: {resp.text[:200]}")
    try:
        pem = first_certificate(resp.text)
        got = fingerprint(pem)
    except ValueError as exc:
        raise errors.UntrustedPlatform(f"{ca_url} answered no certificate ({exc})") from None
    if expected is not None and got != parse_fingerprint(expected):
        raise errors.UntrustedPlatform(
            f"{url} is not the platform you named: expected its certificate authority {parse_fingerprint(expected)}, "
            f"got {got}. Check the fingerprint with the platform's operator (`dcluster status`)"
        )
    return pem


def peer_fingerprint(url: str, *, timeout_s: float = 5.0) -> str | None:
    """The fingerprint of the certificate the server at url presents (no verification: for error messages)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout_s) as sock:
            with context.wrap_socket(sock, server_hostname=parts.hostname) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return der_fingerprint(der) if der else None


def verification_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under an httpx error, if that is what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def untrusted(url: str, trust: Trust, failure: ssl.SSLCertVerificationError) -> errors.UntrustedPlatform:
    """The error for a server whose certificate failed the check: what was expected, what it presented."""
    got = peer_fingerprint(url) or "a certificate that could not be read"
    reason = failure.verify_message or str(failure)
    if trust.ca_pem:
        expected = f"a certificate issued by the pinned certificate authority {trust.fingerprint}"
        fix = "if the platform's operator changed its certificate authority, log in again with the new fingerprint"
    else:
        expected = "a certificate this system's trust store accepts"
        fix = (
            "if the platform has a certificate authority of its own, pass --fingerprint SHA256:... "
            "(`dcluster up` and `dcluster status` on the platform print it)"
        )
    return errors.UntrustedPlatform(f"{url}: expected {expected}, got {got} ({reason}); {fix}")
