"""Platform settings, built once at the entry point (the Serve app's args) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from configs import aws as aws_config
from dcl_core import domain

NAMESPACE = "dcluster"


class PlatformSettings(domain.StrictModel):
    state_dir: Annotated[Path, Field(description="Where the database and the platform's secrets live")]
    heartbeat_interval_s: Annotated[float, Field(ge=0.2, le=300, description="How often agents heartbeat")] = 5.0
    missed_heartbeats_offline: Annotated[int, Field(ge=1, le=100, description="Missed beats before offline")] = 3
    token_ttl_s: Annotated[int, Field(ge=60, le=86_400, description="Lifetime of a sign-in JWT")] = 1800
    login_max_failures_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 10
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16)] = 12
    max_long_poll_s: Annotated[float, Field(ge=1, le=120)] = 30.0
    api_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(:[0-9]+)?/?$",
                                  description="The API's URL as provider machines reach it")] = "http://127.0.0.1:8000"
    provision_timeout_s: Annotated[float, Field(ge=30, le=3600, description="Launch to running, or failed")] = 600.0
    reconcile_interval_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    aws: Annotated[aws_config.AwsSettings | None, Field(
        description="Enables backend 'aws' (EC2 head and GPU workers); None: only the provider market")] = None
    max_lifetime_s: Annotated[int, Field(ge=60, le=90 * 86_400, description="Longest a cluster may live, extensions included")] = 7 * 86_400

    @property
    def db_path(self) -> Path:
        return self.state_dir / "platform.db"

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
        """A machine is online while its last heartbeat is at or after this (dcl_core.domain.MachineStatus.effective)."""
        return now - self.offline_after_s
