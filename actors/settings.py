"""Platform settings, built once at the entry point (the Serve app's args) and passed down."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from configs import aws as aws_config
from dcl_core import database_url, domain, protocol, quota_limits

NAMESPACE = "dcluster"


DB_FILE = "platform.db"  # the SQLite database, in the state dir


@functools.cache
@functools.cache
def platform_ray_version() -> str:
    """The Ray installed with the platform (read once: its metadata is a file scan, and offers and creates ask)."""
    return importlib.metadata.version("ray")


def launchable_ray_versions() -> tuple[str, ...]:
    """The Ray versions the platform launches clusters of: the launcher runs the platform's own Ray, and a head
    of another version would not take its commands. A cluster's spec may ask for one of these."""
    return (platform_ray_version(),)


class PlatformSettings(domain.StrictModel):
    state_dir: Annotated[
        Path,
        Field(
            description="SQLite: where the database and the platform's secrets live; PostgreSQL: scratch on each "
            "node (the launcher's temp files, the admin credentials file)"
        ),
    ]
    database: Annotated[
        str | None,
        Field(
            pattern=r"^postgres(ql)?://\S+$",
            max_length=2000,
            description="A PostgreSQL URL (postgresql://user@host:5432/dbname) for a platform on several "
            "machines; None: SQLite in state_dir (embedded, nothing to set up)",
        ),
    ] = None
    heartbeat_interval_s: Annotated[float, Field(ge=0.2, le=300, description="How often agents heartbeat")] = 5.0
    missed_heartbeats_offline: Annotated[int, Field(ge=1, le=100, description="Missed beats before offline")] = 3
    token_ttl_s: Annotated[int, Field(ge=60, le=86_400, description="Lifetime of a sign-in JWT")] = 1800
    login_max_failures_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 10
    # Each sign-in and sign-up costs a bcrypt hash (~0.3 s of a core at 12 rounds): these bound
    # what strangers can make the platform hash (429 with Retry-After past them).
    login_failures_per_address_per_minute: Annotated[
        float, Field(gt=0, le=1_000_000, description="Failed sign-ins from one client address (burst as large)")
    ] = 30
    signups_per_address_per_minute: Annotated[
        float, Field(gt=0, le=1_000_000, description="Sign-ups from one client address (burst as large)")
    ] = 30
    signups_per_minute: Annotated[float, Field(gt=0, le=1_000_000, description="Sign-ups, all clients")] = 120
    password_hashes_per_minute: Annotated[
        float, Field(gt=0, le=1_000_000, description="bcrypt hashes (sign-ins + sign-ups), all clients; burst a tenth")
    ] = 90
    password_hash_threads: Annotated[
        int, Field(ge=1, le=64, description="bcrypt hashes run at once (1: at most one core, whatever the load)")
    ] = 1
    trusted_proxy_hops: Annotated[
        int,
        Field(
            ge=0,
            le=8,
            description="Proxies in front of the API that append to X-Forwarded-For; "
            "0: the client address is the TCP peer and the header is ignored",
        ),
    ] = 0
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16)] = 12
    max_long_poll_s: Annotated[float, Field(ge=1, le=protocol.MAX_LONG_POLL_S)] = protocol.MAX_LONG_POLL_S
    listen_host: Annotated[
        str, Field(pattern=r"^[0-9A-Za-z.:\-]{1,255}$", description="Where the API replica listens itself")
    ] = "127.0.0.1"
    listen_port: Annotated[
        int | None,
        Field(
            ge=1,
            le=65535,
            description="The API's port, served by the replica itself (serve_app.listener); "
            "None: only through Serve's HTTP proxy, if the Serve config enables one",
        ),
    ] = None
    api_url: Annotated[
        str, Field(pattern=r"^https?://[^\s/]+(:[0-9]+)?/?$", description="The API's URL as provider machines reach it")
    ] = "http://127.0.0.1:8000"
    tls_certfile: Annotated[
        Path | None,
        Field(description="PEM certificate chain the API serves (leaf first); None: plain HTTP"),
    ] = None
    tls_keyfile: Annotated[Path | None, Field(description="The certificate's private key (PEM, 0600)")] = None
    tls_ca_file: Annotated[
        Path | None,
        Field(
            description="The certificate clients pin (the platform's own CA, or the top of an operator's chain): "
            "published at GET /v1/tls/ca.pem and handed to sub-clusters' node providers"
        ),
    ] = None
    provision_timeout_s: Annotated[float, Field(ge=30, le=3600, description="Launch to running, or failed")] = 600.0
    reconcile_interval_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    cluster_logs_max_bytes: Annotated[
        int,
        Field(
            ge=0, le=1 << 30, description="Most bytes of logs kept of one cluster (its leases ship them as they close)"
        ),
    ] = 16 << 20
    cluster_logs_retention_s: Annotated[
        float, Field(ge=0, le=365 * 86_400, description="How long a cluster's logs are kept after it ended")
    ] = 7 * 86_400
    aws: Annotated[
        aws_config.AwsSettings | None,
        Field(description="Enables backend 'aws' (EC2 head and GPU workers); None: only the provider market"),
    ] = None
    max_lifetime_s: Annotated[
        int, Field(ge=60, le=90 * 86_400, description="Longest a cluster may live, extensions included")
    ] = 7 * 86_400
    gpu_check_interval_s: Annotated[
        float,
        Field(ge=0.1, le=600, description="How often due GPU checks are looked for (a new machine waits at most this)"),
    ] = 2.0
    gpu_check_accepts_fake_nvml: Annotated[
        bool,
        Field(
            description="TEST PLATFORMS ONLY: count GPU checks that read a fake NVML (agents started with "
            "--test-fake-nvml); otherwise such a machine stays unverified"
        ),
    ] = False
    quotas: Annotated[
        quota_limits.QuotaLimits,
        Field(description="Every buyer account's limits unless an admin set its own (PUT /v1/accounts/{id}/quota)"),
    ] = quota_limits.QuotaLimits()

    @model_validator(mode="after")
    def _tls_files_together(self) -> PlatformSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together: both, or neither for plain HTTP")
        if self.tls_ca_file is not None and self.tls_certfile is None:
            raise ValueError("tls_ca_file needs tls_certfile and tls_keyfile: a CA is published only with TLS on")
        return self

    def tls_ca_pem(self) -> str | None:
        """The certificate clients pin (PEM), when the API serves TLS and names one."""
        return self.tls_ca_file.read_text() if self.tls_ca_file is not None else None

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILE

    @property
    def db_location(self) -> Path | str:
        """What actors.db.database.Database opens: the PostgreSQL URL, else the SQLite file."""
        return self.database or self.db_path

    @property
    def shared_database(self) -> bool:
        """The state is in a database every platform node reaches (PostgreSQL), not in the head's state dir."""
        return database_url.is_postgres_url(self.db_location)

    @property
    def clusters_dir(self) -> Path:
        return self.state_dir / "clusters"

    @property
    def admin_credentials_path(self) -> Path:
        return self.state_dir / "admin_credentials.json"

    @property
    def offline_after_s(self) -> float:
        return self.heartbeat_interval_s * self.missed_heartbeats_offline

    def online_cutoff(self, now: float) -> float:
        """A machine is online while its last heartbeat is at or after this
        (dcl_core.domain.MachineStatus.effective)."""
        return now - self.offline_after_s
