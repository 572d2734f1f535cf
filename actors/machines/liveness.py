"""What the registry tells the ClusterManager about agents' liveness (ProviderRegistry.lease_liveness): the
silence cutoff, and the leases each agent said it holds in its latest heartbeat."""

from __future__ import annotations

from typing import TypedDict


class Held(TypedDict):
    """A machine's latest heartbeat: when it came, and the ids of the leases its agent held then."""

    at: float
    leases: list[str]


class LeaseLiveness(TypedDict):
    silence_cutoff: float  # a machine whose last heartbeat is older is silent
    held: dict[str, Held]  # machine id -> its agent's latest heartbeat
