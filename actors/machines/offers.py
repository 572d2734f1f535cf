"""The marketplace view: online capacity grouped by GPU model, sandboxing and what a lease runs (pure
functions)."""

from __future__ import annotations

import json
from typing import Any

from actors.machines import placement
from dcl_core import domain


def sandboxed(machine: dict[str, Any]) -> bool:
    """Whether the machine runs leases in a sandbox (its spec's `sandbox`; older agents: no)."""
    spec = machine.get("spec") or {}
    if isinstance(spec, str):
        spec = json.loads(spec)
    return bool(spec.get("sandbox", domain.UNSANDBOXED) != domain.UNSANDBOXED)


def group_offers(machines: list[dict[str, Any]], launchable_ray: tuple[str, ...]) -> list[dict[str, Any]]:
    """Machines rows (online only) → one offer per GPU model, sandboxing, Ray version and Python minor version
    (a cluster's nodes all run the same), CPU-only machines under None; each row's `gpu_verification` status (a
    domain.GpuVerification value) is counted per group. launchable_ray: the Ray versions clusters may run."""
    groups: dict[tuple[str | None, bool, domain.LeaseRuntime], dict[str, Any]] = {}
    for m in machines:
        model = m["gpu_model"] if m["gpus"] else None
        safe = sandboxed(m)
        runtime = placement.runtime_of(m)
        g = groups.setdefault(
            (model, safe, runtime),
            {
                "gpu_model": model,
                "sandboxed": safe,
                "ray_version": runtime.ray,
                "python_version": runtime.python,
                "launchable": runtime.ray in launchable_ray,
                "machines": 0,
                "gpus": 0,
                "cpus": 0,
                "memory_mb": 0,
                "_gpu_prices": [],
                "_cpu_prices": [],
                "_reliability": [],
                "verified_gpus": 0,
                "gpu_verification": {},
            },
        )
        g["machines"] += 1
        g["gpus"] += m["gpus"]
        g["cpus"] += m["cpus"]
        g["memory_mb"] += m["memory_mb"]
        g["_gpu_prices"].append(m["price_per_gpu_hour"])
        g["_cpu_prices"].append(m["price_per_cpu_hour"])
        g["_reliability"].append(m.get("reliability", 1.0))
        verification = m.get("gpu_verification") or domain.GpuVerification.NO_GPUS.value
        g["gpu_verification"][verification] = g["gpu_verification"].get(verification, 0) + 1
        if verification == domain.GpuVerification.VERIFIED.value:
            g["verified_gpus"] += m["gpus"]
    result = []
    for g in groups.values():
        gpu_prices, cpu_prices, reliability = g.pop("_gpu_prices"), g.pop("_cpu_prices"), g.pop("_reliability")
        g.update(
            price_per_gpu_hour_min=min(gpu_prices),
            price_per_gpu_hour_max=max(gpu_prices),
            price_per_cpu_hour_min=min(cpu_prices),
            price_per_cpu_hour_max=max(cpu_prices),
            reliability_min=min(reliability),
            reliability_max=max(reliability),
        )
        result.append(g)
    # GPU models first, CPU-only last; what a cluster can run before what it cannot; most GPUs first; sandboxed
    # machines before unsandboxed ones.
    return sorted(
        result,
        key=lambda g: (
            g["gpu_model"] is None,
            not g["launchable"],
            -g["gpus"],
            g["gpu_model"] or "",
            not g["sandboxed"],
            g["ray_version"],
            g["python_version"],
        ),
    )
