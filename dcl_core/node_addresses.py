"""Node addresses and ports as providers report them: only a literal unicast IP and a port in 1-65535 are taken.

The platform connects to what a provider's agent reports (its head's dashboard, a node's metrics): a host name
would be resolved by whatever DNS the platform uses, and an unspecified, multicast or broadcast address names no
single machine, so each is refused where it arrives and again before any connection is made.
"""

from __future__ import annotations

import ipaddress

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def unicast_ip(value: object) -> str:
    """The address in its normal form, or ValueError naming what is wrong with it."""
    if not isinstance(value, str):
        raise ValueError(f"node address {value!r} is not a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"node address {value[:100]!r} is not a literal IP address (host names are refused)") from None
    if address.is_unspecified or address.is_multicast or address == _BROADCAST:
        raise ValueError(f"node address {value!r} is not a unicast address")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"node address {value!r} carries a zone; a routable unicast address is needed")
    return str(address)


def port(value: object) -> int:
    """The port, or ValueError: an int in 1-65535 (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"port {value!r} is not an integer in 1-65535")
    return value
