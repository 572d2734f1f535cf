"""Machine detection: a fake NVML module stands in for GPUs; every failure gives a CPU-only spec."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import psutil
import pytest

from dcl_core import domain
from worker.agent import detect

GIB = 1024**3


class FakeNVMLError(Exception):
    pass


class FakeLibraryNotFound(FakeNVMLError):
    """Like pynvml.NVMLError_LibraryNotFound."""


class FakeNvml:
    """Implements the pynvml functions detect uses, with the same names and return shapes."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus, *, driver="550.54.15", cuda=12040, names_as_bytes=True, has_v2=True, fail=None):
        self.gpus = gpus  # [(name, total bytes, uuid, utilization %)]
        self.driver, self.cuda, self.names_as_bytes = driver, cuda, names_as_bytes
        self.fail = fail or {}  # function name -> exception to raise
        self.calls: list[str] = []
        if not has_v2:
            self.nvmlSystemGetCudaDriverVersion_v2 = None  # getattr finds None: as if absent

    def _call(self, name):
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def nvmlInit(self):
        self._call("nvmlInit")

    def nvmlShutdown(self):
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._call("nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle):
        self._call("nvmlDeviceGetName")
        name = self.gpus[handle][0]
        return name.encode() if self.names_as_bytes else name

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=self.gpus[handle][1], free=0, used=0)

    def nvmlDeviceGetUUID(self, handle):
        self._call("nvmlDeviceGetUUID")
        return self.gpus[handle][2].encode() if self.names_as_bytes else self.gpus[handle][2]

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._call("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.gpus[handle][3], memory=0)

    def nvmlSystemGetDriverVersion(self):
        self._call("nvmlSystemGetDriverVersion")
        return self.driver.encode() if self.names_as_bytes else self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self):
        self._call("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda

    def nvmlSystemGetCudaDriverVersion(self):
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.cuda


TWO_H100 = [("NVIDIA H100 80GB HBM3", 80 * GIB, "GPU-aaaa", 37.0), ("NVIDIA H100 80GB HBM3", 80 * GIB, "GPU-bbbb", 0.0)]


def _real_nvml_works() -> bool:
    try:
        detect.nvml_gpus()
    except Exception:
        return False
    return True


@pytest.mark.parametrize("as_bytes", [True, False])
def test_two_gpus_detected(as_bytes):
    nvml = FakeNvml(TWO_H100, names_as_bytes=as_bytes)
    spec = detect.detect_machine(nvml=nvml)
    assert [g.model for g in spec.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert [g.index for g in spec.gpus] == [0, 1]
    assert [g.memory_mb for g in spec.gpus] == [81920, 81920]
    assert [g.uuid for g in spec.gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert spec.driver_version == "550.54.15"
    assert spec.cuda_version == "12.4"
    assert spec.gpus_declared is False
    assert spec.gpu_model == "NVIDIA H100 80GB HBM3"
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"
    assert spec.cpus >= 1 and spec.memory_mb >= 1 and spec.hostname


@pytest.mark.parametrize("raw,expected", [(12040, "12.4"), (11080, "11.8"), (12020, "12.2"), (10010, "10.1")])
def test_cuda_version_format(raw, expected):
    assert detect.detect_machine(nvml=FakeNvml(TWO_H100, cuda=raw)).cuda_version == expected


def test_cuda_version_falls_back_to_v1():
    nvml = FakeNvml(TWO_H100, cuda=11080, has_v2=False)
    assert detect.detect_machine(nvml=nvml).cuda_version == "11.8"
    nvml = FakeNvml(TWO_H100, cuda=12020, fail={"nvmlSystemGetCudaDriverVersion_v2": FakeNVMLError("not found")})
    assert detect.detect_machine(nvml=nvml).cuda_version == "12.2"


def test_library_not_found_gives_cpu_only():
    nvml = FakeNvml(TWO_H100, fail={"nvmlInit": FakeLibraryNotFound("NVML Shared Library Not Found")})
    spec = detect.detect_machine(nvml=nvml)
    assert spec.gpus == [] and spec.driver_version is None and spec.cuda_version is None
    assert spec.gpu_model is None


def test_failure_midway_gives_cpu_only_and_shuts_nvml_down():
    nvml = FakeNvml(TWO_H100, fail={"nvmlDeviceGetMemoryInfo": FakeNVMLError("GPU is lost")})
    assert detect.detect_machine(nvml=nvml).gpus == []
    assert nvml.calls[-1] == "nvmlShutdown"


def test_missing_uuid_keeps_the_gpu():
    nvml = FakeNvml(TWO_H100, fail={"nvmlDeviceGetUUID": FakeNVMLError("not supported")})
    assert [g.uuid for g in detect.detect_machine(nvml=nvml).gpus] == [None, None]


def test_odd_gpu_name_is_cleaned():
    nvml = FakeNvml([("NVIDIA GeForce RTX™ 4090 [beta]", 24 * GIB, "GPU-x", 1.0)])
    model = detect.detect_machine(nvml=nvml).gpus[0].model
    assert model == "NVIDIA GeForce RTX 4090 beta"


def test_no_pynvml_module_gives_cpu_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    spec = detect.detect_machine()
    assert spec.gpus == [] and not spec.gpus_declared
    assert detect.current_usage().gpu_utilization == []


def test_real_machine_never_raises():
    spec = detect.detect_machine()
    assert isinstance(spec, domain.MachineSpec)
    assert spec.ray_version and spec.python_version and spec.arch and spec.os
    if not _real_nvml_works():  # this dev machine has no GPU
        assert spec.gpus == []


def test_declared_gpus_override_nvml():
    nvml = FakeNvml(TWO_H100)
    spec = detect.detect_machine(4, "RTX 4090", 24576, nvml=nvml)
    assert len(spec.gpus) == 4 and {g.model for g in spec.gpus} == {"RTX 4090"}
    assert {g.memory_mb for g in spec.gpus} == {24576}
    assert spec.gpus_declared is True and spec.driver_version is None and spec.cuda_version is None
    assert nvml.calls == []  # NVML never touched


def test_declared_zero_is_cpu_only_without_nvml():
    nvml = FakeNvml(TWO_H100)
    spec = detect.detect_machine(0, nvml=nvml)
    assert spec.gpus == [] and spec.gpus_declared is False
    assert nvml.calls == []


def test_default_declared_model_is_valid():
    spec = detect.detect_machine(1)
    assert spec.gpus[0].model == "Logical GPU" and spec.gpus[0].memory_mb == 0


def test_current_usage_reads_gpu_utilization():
    usage = detect.current_usage(3, nvml=FakeNvml(TWO_H100))
    assert usage.gpu_utilization == [37.0, 0.0]
    assert usage.active_leases == 3
    assert 0 <= usage.cpu_percent <= 100 and usage.memory_used_mb > 0


def test_current_usage_skips_nvml_when_asked():
    nvml = FakeNvml(TWO_H100)
    assert detect.current_usage(with_gpus=False, nvml=nvml).gpu_utilization == []
    assert nvml.calls == []


def test_current_usage_never_raises(monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("psutil broke")

    monkeypatch.setattr(psutil, "cpu_percent", boom)
    monkeypatch.setattr(psutil, "virtual_memory", boom)
    usage = detect.current_usage(nvml=FakeNvml(TWO_H100, fail={"nvmlInit": FakeLibraryNotFound("gone")}))
    assert usage == domain.MachineUsage()


def test_detect_survives_broken_psutil(monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("psutil broke")

    monkeypatch.setattr(psutil, "virtual_memory", boom)
    monkeypatch.setattr(psutil, "cpu_count", boom)
    spec = detect.detect_machine(0)
    assert spec.cpus >= 1 and spec.memory_mb == 1
