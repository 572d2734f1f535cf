"""The GPU check: runs inside a check lease's sandbox (`python -m worker.agent.gpu_check`) and prints what it
sees: the GPUs through NVML, and a small matmul timed on each GPU (torch or cupy, when the venv has
one) and on the CPU (numpy, else pure Python). The platform compares it with what the machine claims
(actors.machines.gpu_verification). Standard library, the agent's own modules, and whatever the venv has."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from dcl_core import protocol
from worker.agent import detect, fake_nvml

GPU_MATMUL_N = 2048
NUMPY_MATMUL_N = 256
PYTHON_MATMUL_N = 48  # pure Python: n^3 multiply-adds, a few tenths of a second at most


def _nvml() -> tuple[Any, str]:
    """The NVML to read, and what it is: the real one, or the test-only fake the agent passed in."""
    fake = os.environ.get(protocol.ENV_TEST_FAKE_NVML)
    if fake:
        return fake_nvml.FakeNvml.from_json(fake), "fake"
    return None, "nvml"  # detect's default: pynvml (nvidia-ml-py)


def _timed(backend: str, device: str, n: int, run: Callable[[], Any]) -> protocol.GpuBenchmark:
    try:
        run()  # warm-up: first calls pay for kernels and allocations
        started = time.perf_counter()
        run()
        seconds = max(time.perf_counter() - started, 1e-9)
    except Exception as exc:
        return protocol.GpuBenchmark(backend=backend, device=device, size=n, error=f"{type(exc).__name__}: {exc}"[:500])
    return protocol.GpuBenchmark(
        backend=backend, device=device, size=n, seconds=round(seconds, 6), gflops=round(2 * n**3 / seconds / 1e9, 3)
    )


def gpu_benchmarks(count: int) -> list[protocol.GpuBenchmark]:
    """A matmul on each of the lease's GPUs with torch or cupy; [] when neither is installed (NVML only)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        results = []
        for index in range(min(count, torch.cuda.device_count())):
            a = torch.rand(GPU_MATMUL_N, GPU_MATMUL_N, device=f"cuda:{index}")

            def run(a=a, index=index):
                (a @ a).sum().item()
                torch.cuda.synchronize(index)

            results.append(_timed("torch", f"gpu:{index}", GPU_MATMUL_N, run))
        return results
    try:
        import cupy
    except ImportError:
        return []
    results = []
    for index in range(min(count, cupy.cuda.runtime.getDeviceCount())):
        with cupy.cuda.Device(index):
            a = cupy.random.rand(GPU_MATMUL_N, GPU_MATMUL_N, dtype=cupy.float32)

            def run(a=a):
                (a @ a).sum().item()

            results.append(_timed("cupy", f"gpu:{index}", GPU_MATMUL_N, run))
    return results


def cpu_benchmark() -> protocol.GpuBenchmark:
    try:
        import numpy
    except ImportError:
        n = PYTHON_MATMUL_N
        a = [[(i * n + j) % 7 / 7.0 for j in range(n)] for i in range(n)]
        columns = list(zip(*a, strict=True))
        return _timed(
            "python",
            "cpu",
            n,
            lambda: [[sum(x * y for x, y in zip(row, col, strict=True)) for col in columns] for row in a],
        )
    a = numpy.random.default_rng(0).random((NUMPY_MATMUL_N, NUMPY_MATMUL_N))
    return _timed("numpy", "cpu", NUMPY_MATMUL_N, lambda: a @ a)


def check() -> protocol.GpuCheckReport:
    try:
        nvml, source = _nvml()
        gpus, driver, cuda = detect.nvml_gpus(nvml)
    except Exception as exc:
        return protocol.GpuCheckReport(
            nvml="unavailable",
            uid=os.getuid(),
            nvml_error=f"{type(exc).__name__}: {exc}"[:500],
            benchmarks=[cpu_benchmark()],
        )
    return protocol.GpuCheckReport(
        nvml=source,
        uid=os.getuid(),
        gpus=gpus,
        driver_version=driver,
        cuda_version=cuda,
        benchmarks=[*gpu_benchmarks(len(gpus)), cpu_benchmark()],
    )


def main() -> int:
    print(protocol.GPU_CHECK_MARKER + check().model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
