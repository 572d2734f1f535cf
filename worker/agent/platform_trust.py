"""How the agent trusts the platform: plain HTTP only to this machine unless --insecure, and the platform's
certificate authority pinned in machine.json at enrollment (checked against --fingerprint, or taken on first use
only when told so), so every later call must reach a server holding a certificate that authority issued."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dcluster
from dcluster import tls as client_tls
from worker.agent import state as state_mod

logger = logging.getLogger(__name__)


def _fetch(url: str, expected: str | None, sleep: Callable[[float], Any]) -> str:
    """The platform's CA, retried with backoff while the platform is unreachable (an agent starts before it)."""
    backoff = dcluster.Backoff()
    while True:
        try:
            return client_tls.fetch_ca(url, expected=expected)
        except dcluster.PlatformUnreachable as exc:
            delay = backoff.next()
            logger.warning("fetching the platform's certificate authority failed (%s); retrying in %.0f s", exc, delay)
            sleep(delay)


def resolve(
    url: str,
    state_dir: Path,
    *,
    fingerprint: str | None,
    trust_on_first_use: bool,
    insecure: bool,
    sleep: Callable[[float], Any] = time.sleep,
) -> dcluster.Trust:
    """The agent client's trust, pinning the platform's CA in machine.json when a fingerprint (or first use)
    asks for it. InsecureTransport, UntrustedPlatform or ValueError (a malformed fingerprint) when refused."""
    client_tls.refuse_plain_http(url, insecure=insecure)
    if fingerprint and trust_on_first_use:
        raise ValueError("--fingerprint and --trust-on-first-use exclude each other: give one")
    if not url.startswith("https://"):
        if fingerprint or trust_on_first_use:
            raise ValueError(f"{url} is plain HTTP: a certificate fingerprint means nothing there")
        return dcluster.Trust()
    machine = state_mod.MachineState(state_dir)
    pinned = machine.platform_ca
    if fingerprint:
        expected = client_tls.parse_fingerprint(fingerprint)
        if pinned is None or client_tls.fingerprint(pinned) != expected:
            pinned = _pin(machine, _fetch(url, expected, sleep))
    elif pinned is None and trust_on_first_use:
        pinned = _pin(machine, _fetch(url, None, sleep))
        logger.warning(
            "trusting the platform's certificate authority %s on first use: compare it with what the platform's "
            "operator published",
            client_tls.fingerprint(pinned),
        )
    if pinned is None:
        return dcluster.Trust()  # a certificate the system's trust store accepts
    logger.info("the platform's certificate authority %s is pinned", client_tls.fingerprint(pinned))
    return dcluster.Trust(ca_pem=pinned)


def pinned(url: str, state_dir: Path) -> dcluster.Trust:
    """The trust an enrolled agent already has, without fetching anything (what `doctor` checks with)."""
    ca_pem = state_mod.MachineState(state_dir).platform_ca if url.startswith("https://") else None
    return dcluster.Trust(ca_pem=ca_pem)


def for_check(url: str, state_dir: Path, *, fingerprint: str | None, insecure: bool) -> dcluster.Trust:
    """The trust `doctor` checks the platform with, pinning nothing: the CA of --fingerprint (fetched once and
    compared), else the one enrolled. Refused as the agent would refuse it: plain HTTP to another machine without
    --insecure (InsecureTransport), a CA of another fingerprint (UntrustedPlatform), a malformed one (ValueError)."""
    client_tls.refuse_plain_http(url, insecure=insecure)
    if fingerprint and url.startswith("https://"):
        return dcluster.Trust(ca_pem=client_tls.fetch_ca(url, expected=client_tls.parse_fingerprint(fingerprint)))
    return pinned(url, state_dir)


def _pin(machine: state_mod.MachineState, ca_pem: str) -> str:
    machine.platform_ca = ca_pem
    machine.save()
    return ca_pem
