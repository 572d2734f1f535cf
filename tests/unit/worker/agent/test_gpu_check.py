"""The GPU check lease on the agent: the protocol's check-lease shape, the fake NVML reaching only check leases,
and the check script's report (run for real, unsandboxed, on a fake NVML)."""

from __future__ import annotations

import json
import os
import secrets

import pydantic
import pytest

from actors.machines import gpu_verification
from dcl_core import protocol
from worker.agent import fake_nvml, gpu_check, leases

TOKEN = "tok-" + "z" * 28
FAKE = json.dumps({"driver_version": "550.54", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}] * 2})


def _lease_id() -> str:
    return "l-" + secrets.token_hex(6)


def test_a_check_lease_belongs_to_no_cluster_and_a_node_lease_to_one():
    protocol.LeaseOpen(lease_id=_lease_id(), purpose=protocol.GPU_CHECK_LEASE, ray_auth_token=TOKEN)
    with pytest.raises(pydantic.ValidationError, match="belongs to no cluster"):
        protocol.LeaseOpen(
            lease_id=_lease_id(),
            purpose=protocol.GPU_CHECK_LEASE,
            cluster_id="c-" + "a" * 12,
            role="worker",
            ray_auth_token=TOKEN,
        )
    with pytest.raises(pydantic.ValidationError, match="needs its cluster_id and role"):
        protocol.LeaseOpen(lease_id=_lease_id(), ray_auth_token=TOKEN)


@pytest.fixture
def runner(tmp_path):
    runner = leases.LeaseRunner(
        tmp_path / "leases",
        node_ip="127.0.0.1",
        base_env=dict(os.environ),
        check_env={protocol.ENV_TEST_FAKE_NVML: FAKE},
    )
    yield runner
    runner.close_all(grace_s=0.5)


def test_only_check_leases_see_the_test_fake_nvml_and_the_check_runs_in_one(runner):
    node = _lease_id()
    runner.open(protocol.LeaseOpen(lease_id=node, cluster_id="c-" + "a" * 12, role="worker", ray_auth_token=TOKEN))
    check = _lease_id()
    runner.open(protocol.LeaseOpen(lease_id=check, purpose=protocol.GPU_CHECK_LEASE, ray_auth_token=TOKEN))
    assert protocol.ENV_TEST_FAKE_NVML not in runner.environment(node)
    assert runner.environment(check)[protocol.ENV_TEST_FAKE_NVML] == FAKE
    result = runner.run(check, protocol.GPU_CHECK_COMMAND, timeout_s=60)
    report = gpu_verification.parse_report(result.output)
    assert result.ok and report.nvml == "fake" and len(report.gpus) == 2
    assert runner.close(check).ok and runner.close(node).ok


def test_the_check_reports_nvml_and_a_cpu_matmul(monkeypatch):
    monkeypatch.setenv(protocol.ENV_TEST_FAKE_NVML, FAKE)
    report = gpu_check.check()
    assert report.nvml == "fake" and report.driver_version == "550.54"
    assert [g.memory_mb for g in report.gpus] == [81559, 81559]
    cpu = report.benchmarks[-1]
    assert cpu.device == "cpu" and cpu.backend == "numpy" and cpu.gflops > 0 and cpu.error is None


def test_without_numpy_the_matmul_is_pure_python(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "numpy", None)  # import numpy → ImportError
    bench = gpu_check.cpu_benchmark()
    assert bench.backend == "python" and bench.size == gpu_check.PYTHON_MATMUL_N and bench.gflops > 0


def test_without_nvml_the_report_says_so(monkeypatch):
    monkeypatch.delenv(protocol.ENV_TEST_FAKE_NVML, raising=False)

    def no_library(nvml=None):
        raise OSError("NVML Shared Library Not Found")

    monkeypatch.setattr(gpu_check.detect, "nvml_gpus", no_library)
    report = gpu_check.check()
    assert report.nvml == "unavailable" and "Not Found" in report.nvml_error and report.gpus == []


def test_a_fake_nvml_description_must_be_an_object_with_a_gpu_list():
    with pytest.raises(ValueError):
        fake_nvml.FakeNvml.from_json('["not", "an", "object"]')
    assert fake_nvml.FakeNvml.from_json(FAKE).nvmlDeviceGetCount() == 2
