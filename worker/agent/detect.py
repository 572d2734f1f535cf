"""Detect what a provider machine offers (GPUs via NVML, CPU/RAM via psutil) without ever raising."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform  # the stdlib module: the repo's platform/ folder has no __init__.py, so it never shadows this
import re
import socket
from typing import Any

import psutil

from dcl_core import domain

logger = logging.getLogger(__name__)

MAX_GPUS = 64
_MIB = 1024 * 1024
_BAD_MODEL_CHARS = re.compile(r"[^A-Za-z0-9 _.()/+-]")


def _real_nvml() -> Any:
    import pynvml  # nvidia-ml-py; imported lazily so a broken install only disables GPU detection

    return pynvml


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def clean_gpu_model(name: str) -> str:
    """Fit a GPU name to domain.GPU_MODEL_PATTERN (some drivers report odd characters)."""
    cleaned = " ".join(_BAD_MODEL_CHARS.sub(" ", name).split())[:64].strip()
    return cleaned or "Unknown GPU"


def _cuda_version(nvml: Any) -> str | None:
    # _v2 exists since driver 450; older bindings or drivers only have the plain call.
    for fn_name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            continue
        try:
            v = int(fn())
        except Exception:
            continue
        return f"{v // 1000}.{(v % 1000) // 10}"
    return None


def nvml_gpus(nvml: Any = None) -> tuple[list[domain.GpuInfo], str | None, str | None]:
    """Return (gpus, driver version, CUDA version) read through NVML; raises on any NVML failure."""
    nvml = nvml if nvml is not None else _real_nvml()
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(min(int(nvml.nvmlDeviceGetCount()), MAX_GPUS)):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))[:128]
            except Exception:
                uuid = None
            gpus.append(
                domain.GpuInfo(
                    index=index,
                    model=clean_gpu_model(_text(nvml.nvmlDeviceGetName(handle))),
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
                    uuid=uuid,
                )
            )
        driver = _text(nvml.nvmlSystemGetDriverVersion())[:64]
        return gpus, driver, _cuda_version(nvml)
    finally:
        nvml.nvmlShutdown()


def nvml_utilization(nvml: Any = None) -> list[float]:
    """GPU utilization percentages per device; raises on any NVML failure."""
    nvml = nvml if nvml is not None else _real_nvml()
    nvml.nvmlInit()
    try:
        count = min(int(nvml.nvmlDeviceGetCount()), MAX_GPUS)
        return [
            min(100.0, max(0.0, float(nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(i)).gpu)))
            for i in range(count)
        ]
    finally:
        nvml.nvmlShutdown()


def _declared_gpus(count: int, model: str, memory_mb: int) -> list[domain.GpuInfo]:
    model = clean_gpu_model(model)
    memory_mb = max(0, min(int(memory_mb), 10_000_000))
    return [domain.GpuInfo(index=i, model=model, memory_mb=memory_mb) for i in range(min(count, MAX_GPUS))]


def _safe(fn, default):
    try:
        return fn()
    except Exception:
        logger.debug("detection step %s failed", getattr(fn, "__name__", fn), exc_info=True)
        return default


def _ray_version() -> str:
    try:
        return importlib.metadata.version("ray")[:32]
    except importlib.metadata.PackageNotFoundError:
        return ""


def detect_machine(
    declared_gpus: int | None = None,
    declared_gpu_model: str = "Logical GPU",
    declared_gpu_memory_mb: int = 0,
    *,
    declared_cpus: int | None = None,
    nvml: Any = None,
) -> domain.MachineSpec:
    """Describe this machine. declared_gpus overrides NVML (0 = CPU-only without probing);
    declared_cpus the CPU count offered (logical CPUs, e.g. to share a small test machine)."""
    driver = cuda = None
    declared = declared_gpus is not None and declared_gpus > 0
    if declared_gpus is not None:
        gpus = _declared_gpus(declared_gpus, declared_gpu_model, declared_gpu_memory_mb)
    else:
        try:
            gpus, driver, cuda = nvml_gpus(nvml)
        except Exception as exc:
            logger.info("no NVIDIA GPU detected (%s: %s); offering a CPU-only machine", type(exc).__name__, exc)
            gpus = []
    vm_total = _safe(lambda: psutil.virtual_memory().total, 0)
    release = _safe(platform.release, "")
    return domain.MachineSpec(
        hostname=(_safe(socket.gethostname, "") or "localhost")[:255],
        os=f"{_safe(platform.system, '')} {release}".strip()[:128],
        arch=_safe(platform.machine, "")[:32],
        cpus=declared_cpus
        or max(1, min(_safe(lambda: psutil.cpu_count(logical=True), None) or os.cpu_count() or 1, 4096)),
        memory_mb=max(1, min(vm_total // _MIB, 1_000_000_000)),
        gpus=gpus,
        gpus_declared=declared,
        driver_version=driver,
        cuda_version=cuda,
        ray_version=_ray_version(),
        python_version=_safe(platform.python_version, "")[:32],
    )


def current_usage(active_leases: int = 0, *, with_gpus: bool = True, nvml: Any = None) -> domain.MachineUsage:
    """Current use for a heartbeat; with_gpus=False skips NVML (CPU-only or declared GPUs)."""
    cpu = _safe(lambda: float(psutil.cpu_percent(interval=None)), 0.0)
    vm = _safe(psutil.virtual_memory, None)
    used_mb = (vm.total - vm.available) // _MIB if vm is not None else 0
    gpu_util: list[float] = []
    if with_gpus:
        try:
            gpu_util = nvml_utilization(nvml)
        except Exception as exc:
            logger.debug("GPU utilization unavailable: %s: %s", type(exc).__name__, exc)
    return domain.MachineUsage(
        cpu_percent=min(100.0, max(0.0, cpu)),
        memory_used_mb=max(0, min(int(used_mb), 1_000_000_000)),
        gpu_utilization=gpu_util,
        active_leases=max(0, min(int(active_leases), 1024)),
    )
