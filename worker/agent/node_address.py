"""The address this machine's leases advertise (`ray start --node-ip-address`): where the platform, the other
nodes of a cluster and its buyer reach them.

Ray's own guess is the source address of a route to 8.8.8.8; on a site with no default route (a provider that
reaches the platform over a private link only) it falls back to what the hostname resolves to, often
127.0.0.1, which nothing else reaches. The address this machine uses towards the platform is one the platform
reaches back, so it is the default; `--node-ip` names another (buyers on another network, a NAT)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from dcluster import tls as client_tls


def parse(text: str) -> str:
    """An IPv4 or IPv6 address as Ray takes it; ValueError naming the text otherwise."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (the address this machine's leases are reached at)") from None


def facing(platform_url: str) -> str | None:
    """The local address of this machine's route to the platform's host (a UDP connect picks the route and sends
    nothing); None for a platform on this machine (loopback), a name that does not resolve, or no route."""
    parts = urlsplit(platform_url)
    host = parts.hostname
    if not host or client_tls.is_loopback_host(host):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        targets = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, ValueError):
        return None
    for family, _type, _proto, _name, address in targets:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(address)
                local = str(probe.getsockname()[0])
        except OSError:
            continue
        if not ipaddress.ip_address(local).is_loopback:
            return local
    return None


def choose(explicit: str | None, platform_url: str) -> str | None:
    """--node-ip when given, else the address towards the platform; None leaves it to Ray's guess."""
    return explicit or facing(platform_url)
