"""The marketplace view: online capacity grouped by GPU model (pure functions)."""

from __future__ import annotations


def group_offers(machines: list[dict]) -> list[dict]:
    """Machines rows (online only) → one offer per GPU model, CPU-only machines under None."""
    groups: dict[str | None, dict] = {}
    for m in machines:
        key = m["gpu_model"] if m["gpus"] else None
        g = groups.setdefault(key, {"gpu_model": key, "machines": 0, "gpus": 0, "cpus": 0, "memory_mb": 0,
                                    "_gpu_prices": [], "_cpu_prices": []})
        g["machines"] += 1
        g["gpus"] += m["gpus"]
        g["cpus"] += m["cpus"]
        g["memory_mb"] += m["memory_mb"]
        g["_gpu_prices"].append(m["price_per_gpu_hour"])
        g["_cpu_prices"].append(m["price_per_cpu_hour"])
    result = []
    for g in groups.values():
        gpu_prices, cpu_prices = g.pop("_gpu_prices"), g.pop("_cpu_prices")
        g.update(price_per_gpu_hour_min=min(gpu_prices), price_per_gpu_hour_max=max(gpu_prices),
                 price_per_cpu_hour_min=min(cpu_prices), price_per_cpu_hour_max=max(cpu_prices))
        result.append(g)
    # GPU models first (most GPUs first), CPU-only last.
    return sorted(result, key=lambda g: (g["gpu_model"] is None, -g["gpus"], g["gpu_model"] or ""))
