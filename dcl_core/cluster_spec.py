"""The buyer's cluster request, validated once and shared by the API, the ClusterManager and rendering."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dcl_core import domain, ids

RAY_VERSION_PATTERN = r"^[0-9][0-9a-z.+-]{0,31}$"
PYTHON_MINOR_PATTERN = r"^3\.[0-9]{1,2}$"
MIN_DURATION_S = 60
MAX_DURATION_S = 7 * 24 * 3600


Backend = Literal["market", "aws"]


class ClusterSpec(domain.StrictModel):
    name: Annotated[
        str | None,
        Field(
            default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Optional display name: 1-40 of [a-z0-9-]"
        ),
    ] = None
    num_workers: Annotated[int, Field(ge=1, le=64, description="Worker nodes (the head is extra)")]
    gpus_per_worker: Annotated[int, Field(ge=0, le=8, description="GPUs on each worker")] = 0
    gpu_model: Annotated[
        str | None,
        Field(default=None, pattern=ids.GPU_MODEL_PATTERN, description="Exact GPU model, e.g. 'NVIDIA A100-SXM4-80GB'"),
    ] = None
    cpus_per_worker: Annotated[int, Field(ge=1, le=256, description="CPUs on each worker")] = 1
    duration_s: Annotated[int, Field(ge=MIN_DURATION_S, le=MAX_DURATION_S, description="Lifetime in seconds")]
    backend: Annotated[Backend, Field(description="Where the nodes run")] = "market"
    max_price_per_gpu_hour: Annotated[
        float | None,
        Field(
            default=None,
            ge=0,
            le=10_000,
            description="Most USD per GPU-hour a GPU worker may cost, replacements included; None: any price",
        ),
    ] = None
    max_price_per_cpu_hour: Annotated[
        float | None,
        Field(
            default=None,
            ge=0,
            le=10_000,
            description="Most USD per CPU-hour a CPU-only node (the head, CPU workers) may cost; None: any price",
        ),
    ] = None
    min_reliability: Annotated[
        float | None,
        Field(
            default=None,
            ge=0,
            le=1,
            description="Only machines at least this reliable (GET /v1/offers shows each group's range); None: any",
        ),
    ] = None
    verified_gpus_only: Annotated[
        bool,
        Field(
            description="GPU workers only on machines whose GPUs a check lease verified (not declared, not "
            "mismatched); replacements too"
        ),
    ] = False
    image: Annotated[
        str | None,
        Field(
            default=None,
            max_length=256,
            pattern=ids.CONTAINER_IMAGE_PATTERN,
            description="Container image of every node (machines with the docker "
            "runtime); it must have the platform's Ray and Python "
            "versions. Default: the platform image",
        ),
    ] = None
    ray_version: Annotated[
        str | None,
        Field(
            default=None,
            pattern=RAY_VERSION_PATTERN,
            description="The Ray version every node runs, one the platform can launch (GET /v1/offers names them); "
            "default: the platform's own. Every node runs on a machine whose leases run it",
        ),
    ] = None
    python_version: Annotated[
        str | None,
        Field(
            default=None,
            pattern=PYTHON_MINOR_PATTERN,
            description="The Python minor version every node runs, e.g. '3.11' (a Ray client must use the same); "
            "default: the one of the machines chosen. Set by the platform when the nodes are placed",
        ),
    ] = None
