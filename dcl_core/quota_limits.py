"""The per-account quota limits and an admin's overrides: their fields and bounds, shared by the
platform settings, the API models and the check in actors/clusters/quotas.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dcl_core import domain

LIMITS = ("max_clusters", "max_gpus", "max_cpus", "max_gpu_hours")


class QuotaLimits(domain.StrictModel):
    """The platform's defaults (PlatformSettings.quotas): generous, but finite."""

    max_clusters: Annotated[int, Field(ge=0, le=100_000, description="Live clusters at once")] = 10
    max_gpus: Annotated[int, Field(ge=0, le=1_000_000, description="GPUs held at once")] = 64
    max_cpus: Annotated[int, Field(ge=0, le=10_000_000, description="CPUs held at once (heads included)")] = 1024
    max_gpu_hours: Annotated[float, Field(ge=0, le=1e9, description="GPU-hours per period")] = 1000.0
    period_s: Annotated[int, Field(ge=3600, le=366 * 86_400, description="The rolling window of max_gpu_hours")] = (
        30 * 86_400
    )


class QuotaOverrides(domain.StrictModel):
    """An admin's per-account settings; a field left out (None) takes the platform's default."""

    max_clusters: Annotated[int | None, Field(ge=0, le=100_000, description="Live clusters at once")] = None
    max_gpus: Annotated[int | None, Field(ge=0, le=1_000_000, description="GPUs held at once")] = None
    max_cpus: Annotated[int | None, Field(ge=0, le=10_000_000, description="CPUs held at once")] = None
    max_gpu_hours: Annotated[float | None, Field(ge=0, le=1e9, description="GPU-hours per period")] = None
