"""dcluster: the platform's HTTP client, for buyers' programs, the `dcluster` CLI and the provider agent.

import dcluster
with dcluster.Client("http://127.0.0.1:8000") as client:
    client.login("alice", password)
    cluster = client.create_cluster(num_workers=2, duration_s=3600)
"""

from dcluster.backoff import Backoff
from dcluster.client import Client, PlatformApi, Probe
from dcluster.errors import (
    ApiError,
    ClientError,
    InsecureTransport,
    PlatformUnreachable,
    UntrustedPlatform,
    is_transient,
)
from dcluster.tls import Trust

__all__ = [
    "ApiError",
    "Backoff",
    "Client",
    "ClientError",
    "InsecureTransport",
    "PlatformApi",
    "PlatformUnreachable",
    "Probe",
    "Trust",
    "UntrustedPlatform",
    "is_transient",
]
