"""The inbound rules of an aws cluster's security group as values: what is opened to whom, one grant at a time,
and what is wrong with a set of rules. Pure: ec2.py applies them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

# The ports reachable from AwsSettings.allowed_cidr; everything else only from inside the group.
OPEN_PORTS = {22: "SSH (the launcher, operators)", 8265: "Ray dashboard and jobs API", 10001: "Ray client"}


def ip_permissions(allowed_cidr: str) -> list[dict[str, Any]]:
    """Inbound rules from outside the cluster: OPEN_PORTS from allowed_cidr, nothing else."""
    network = ipaddress.ip_network(allowed_cidr)
    ranges, key = ("IpRanges", "CidrIp") if network.version == 4 else ("Ipv6Ranges", "CidrIpv6")
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            ranges: [{key: str(network), "Description": f"dcluster: {what}"}],
        }
        for port, what in OPEN_PORTS.items()
    ]


Grant = tuple[str, int, int, str, str]  # (protocol, from port, to port, source kind, source)
_SOURCES = {
    "IpRanges": "CidrIp",
    "Ipv6Ranges": "CidrIpv6",
    "UserIdGroupPairs": "GroupId",
    "PrefixListIds": "PrefixListId",
}


def grants(permissions: Iterable[dict[str, Any]]) -> Iterator[tuple[Grant, str | None]]:
    """One (grant, description) per protocol/port range/source: the unit AWS authorizes and revokes."""
    for perm in permissions:
        proto = str(perm.get("IpProtocol", "-1"))
        from_port, to_port = (-1, -1) if proto == "-1" else (int(perm.get("FromPort", -1)), int(perm.get("ToPort", -1)))
        for kind, key in _SOURCES.items():
            for source in perm.get(kind, []):
                yield (proto, from_port, to_port, kind, source[key]), source.get("Description")


def permission(grant: Grant, description: str | None) -> dict[str, Any]:
    proto, from_port, to_port, kind, source = grant
    entry = {_SOURCES[kind]: source, **({"Description": description} if description else {})}
    perm: dict[str, Any] = {"IpProtocol": proto, kind: [entry]}
    if proto != "-1":
        perm.update(FromPort=from_port, ToPort=to_port)
    return perm


def describe_grant(grant: Grant) -> str:
    proto, from_port, to_port = grant[:3]
    if proto == "-1":
        return "all traffic"
    name = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
    return f"{name} {from_port}" if from_port == to_port else f"{name} {from_port}-{to_port}"


def _all_ports(grant: Grant) -> bool:
    proto, from_port, to_port = grant[:3]
    return proto == "-1" or (proto in ("tcp", "udp", "6", "17") and from_port <= 1 and to_port >= 65535)


def security_group_findings(ip_permissions: list[dict[str, Any]], *, group_id: str | None = None) -> list[str]:
    """Problems in a security group's inbound rules (EC2's IpPermissions shape); [] when there are none.

    Reports any rule open to the world (0.0.0.0/0, ::/0), all ports (or all traffic) open to a network,
    and, when group_id is given, rules that admit another security group than the cluster's own.
    """
    findings = []
    for grant, _ in grants(ip_permissions):
        _, _, _, kind, source = grant
        what = describe_grant(grant)
        if kind in ("IpRanges", "Ipv6Ranges"):
            network = ipaddress.ip_network(source, strict=False)
            if network.prefixlen == 0:
                findings.append(f"{what} is open to the whole internet ({source})")
            if _all_ports(grant):
                findings.append(f"{what} (every port) is open to {source}")
        elif kind == "UserIdGroupPairs" and group_id is not None and source != group_id:
            findings.append(f"{what} is open to another security group ({source})")
    return findings
