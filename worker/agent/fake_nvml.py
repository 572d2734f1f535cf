"""A stand-in for pynvml, built from a JSON description, for tests on machines without a GPU.

Used only when the agent runs with `--test-fake-nvml FILE`: its detection reads the fake, and its GPU
check leases get the description in $DCL_TEST_FAKE_NVML. The check then reports nvml="fake", and a
platform counts such a check only with `gpu_check_accepts_fake_nvml` (test platforms): a provider who
starts an agent with the flag gets its machine `unverified`, never `verified`.

Description: {"driver_version": "550.54", "cuda_version": 12040,
              "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "uuid": "GPU-..."}]}
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

_MIB = 1024 * 1024


class FakeNvmlError(Exception):
    """Like pynvml.NVMLError."""


class FakeNvml:
    """The pynvml functions worker.agent.detect calls, with the same names and return shapes."""

    NVMLError = FakeNvmlError

    def __init__(self, description: dict[str, Any]):
        if not isinstance(description, dict) or not isinstance(description.get("gpus", []), list):
            raise ValueError('a fake NVML description is a JSON object with a "gpus" list')
        self._gpus = [dict(g) for g in description.get("gpus", [])]
        self._driver = str(description.get("driver_version", "fake"))
        self._cuda = int(description.get("cuda_version", 12000))

    @classmethod
    def from_json(cls, text: str) -> FakeNvml:
        return cls(json.loads(text))

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self._gpus):
            raise FakeNvmlError(f"no GPU {index}")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._gpus[handle]["name"])

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=int(self._gpus[handle]["memory_mb"]) * _MIB, free=0, used=0)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._gpus[handle].get("uuid") or f"GPU-fake-{handle}")

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=0, memory=0)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self._cuda
