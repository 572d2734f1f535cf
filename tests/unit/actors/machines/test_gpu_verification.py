"""The decision logic of GPU verification: what a registration sets, and the verdict on a check's report."""

import json

import pytest

from actors.machines import gpu_verification as gv
from dcl_core import domain, protocol

V = domain.GpuVerification
H100, H100_MIB = "NVIDIA H100 80GB HBM3", 81559


def spec(gpus=2, model=H100, memory_mb=H100_MIB, *, declared=False, sandbox="bwrap"):
    return domain.MachineSpec(
        hostname="h",
        cpus=8,
        memory_mb=16000,
        gpus_declared=declared,
        sandbox=sandbox,
        gpus=[domain.GpuInfo(index=i, model=model, memory_mb=memory_mb) for i in range(gpus)],
    )


def report(gpus=2, model=H100, memory_mb=H100_MIB, nvml="nvml"):
    return protocol.GpuCheckReport(
        nvml=nvml,
        gpus=[domain.GpuInfo(index=i, model=model, memory_mb=memory_mb) for i in range(gpus)],
        benchmarks=[protocol.GpuBenchmark(backend="numpy", device="cpu", size=256, seconds=0.01, gflops=3.3)],
    )


@pytest.mark.parametrize(
    "machine,status",
    [
        (spec(gpus=0), V.NO_GPUS),
        (spec(declared=True), V.DECLARED),
        (spec(sandbox="none"), V.UNVERIFIED),
        (spec(), V.PENDING),
    ],
)
def test_a_new_machine_gets_its_first_status_from_what_it_claims(machine, status):
    assert gv.on_register(machine, None, None).status is status


def test_a_verified_machine_keeps_its_status_until_its_claim_changes():
    assert gv.on_register(spec(), spec(), V.VERIFIED.value) is None
    assert gv.on_register(spec(gpus=4), spec(), V.VERIFIED.value).status is V.PENDING
    assert gv.on_register(spec(model="NVIDIA A100"), spec(), V.VERIFIED.value).status is V.PENDING
    assert gv.on_register(spec(declared=True), spec(), V.VERIFIED.value).status is V.DECLARED


@pytest.mark.parametrize("last", [V.MISMATCH, V.UNVERIFIED, V.PENDING, V.CHECKING])
def test_a_machine_not_verified_is_checked_again_when_it_registers_again(last):
    assert gv.on_register(spec(), spec(), last.value).status is V.PENDING


def test_the_claim_seen_in_the_lease_verifies_the_machine():
    verdict = gv.judge(spec(), report())
    assert verdict.status is V.VERIFIED and verdict.differences == ()
    detail = json.loads(verdict.detail_json())
    assert detail["nvml"] == "nvml" and len(detail["seen"]) == 2 and detail["benchmarks"][0]["backend"] == "numpy"


def test_a_few_mib_less_memory_is_no_mismatch():
    assert gv.judge(spec(memory_mb=81920), report(memory_mb=81559)).status is V.VERIFIED


@pytest.mark.parametrize(
    "seen,expected",
    [
        (report(gpus=1), "count: the machine claims 2 GPU(s), the check lease saw 1"),
        (
            report(model="NVIDIA A100-SXM4-40GB"),
            "GPU 0 model: claimed 'NVIDIA H100 80GB HBM3', seen 'NVIDIA A100-SXM4-40GB'",
        ),
        (report(memory_mb=40960), "GPU 0 memory: claimed 81559 MiB, seen 40960 MiB"),
    ],
)
def test_claims_that_differ_from_what_the_lease_saw_are_a_mismatch_naming_them(seen, expected):
    verdict = gv.judge(spec(), seen)
    assert verdict.status is V.MISMATCH and expected in verdict.differences


def test_no_nvml_in_the_lease_while_the_machine_claims_gpus_is_a_mismatch():
    seen = protocol.GpuCheckReport(nvml="unavailable", nvml_error="NVMLError_LibraryNotFound: not found")
    verdict = gv.judge(spec(), seen)
    assert verdict.status is V.MISMATCH and "NVMLError_LibraryNotFound" in verdict.differences[0]


def test_a_fake_nvml_counts_only_on_a_platform_that_accepts_fakes():
    fake = report(nvml="fake")
    assert gv.judge(spec(), fake).status is V.UNVERIFIED
    assert gv.judge(spec(), fake).reason == gv.FAKE_NVML_REASON
    assert gv.judge(spec(), fake, accept_fake_nvml=True).status is V.VERIFIED


def test_the_report_is_read_from_its_marked_line_only():
    line = protocol.GPU_CHECK_MARKER + report().model_dump_json()
    assert gv.parse_report(f"some warning\n{line}\n").gpus[0].model == H100
    assert gv.parse_report("no report at all") is None
    assert gv.parse_report(protocol.GPU_CHECK_MARKER + '{"nvml": "nvml", "verified": true}') is None


def test_public_view_of_a_row_not_assessed_yet_is_what_a_registration_would_give():
    legacy = {"gpu_check": None, "spec": spec(declared=True).model_dump_json()}
    assert gv.public(legacy)["status"] == gv.status(legacy) == V.DECLARED.value
    row = {
        "gpu_check": V.MISMATCH.value,
        "gpu_checked_at": 5.0,
        "spec": "not read",
        "gpu_check_detail": gv.judge(spec(), report(gpus=1)).detail_json(),
    }
    view = gv.public(row)
    assert view["status"] == gv.status(row) == "mismatch" and view["checked_at"] == 5.0 and view["differences"]
