"""Whether a machine's GPUs are as it claims (pure): the status a registration gives it, and the verdict on
what its check lease saw (actors.machines.gpu_checks runs the check; dcl_core.domain.GpuVerification names the
statuses)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dcl_core import domain, protocol

V = domain.GpuVerification

# NVML's total memory of one GPU moves by a few MiB between drivers: less than this short of the claim is no lie.
MEMORY_TOLERANCE = 0.02
DECLARED_REASON = "GPUs declared by hand (dcluster-agent --gpus): never verified"
UNSANDBOXED_REASON = (
    "the machine runs leases unsandboxed (--runtime none): a check there would not run in a sandbox, so it is not made"
)
FAKE_NVML_REASON = (
    "the check lease read a fake NVML (an agent started with --test-fake-nvml): only a test "
    "platform (gpu_check_accepts_fake_nvml) counts it"
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: domain.GpuVerification
    reason: str | None = None
    differences: tuple[str, ...] = ()
    report: protocol.GpuCheckReport | None = None

    def detail_json(self) -> str:
        """What the machines row keeps of it (gpu_check_detail)."""
        detail: dict[str, Any] = {"reason": self.reason, "differences": list(self.differences)}
        if self.report is not None:
            detail.update(
                nvml=self.report.nvml,
                uid=self.report.uid,
                seen=[g.model_dump() for g in self.report.gpus],
                driver_version=self.report.driver_version,
                benchmarks=[b.model_dump() for b in self.report.benchmarks],
            )
        return json.dumps(detail)


def _claim(spec: domain.MachineSpec) -> list[tuple[str, int]]:
    return [(g.model, g.memory_mb) for g in sorted(spec.gpus, key=lambda g: g.index)]


def on_register(
    spec: domain.MachineSpec, previous: domain.MachineSpec | None, previous_status: str | None
) -> Verdict | None:
    """The status a (re-)registration gives the machine; None keeps the one it has (a verified machine whose
    claim did not change). A new claim, or a machine whose last check failed or differed, is checked again."""
    if not spec.gpus:
        return Verdict(V.NO_GPUS)
    if spec.gpus_declared:
        return Verdict(V.DECLARED, DECLARED_REASON)
    if not spec.sandboxed:
        return Verdict(V.UNVERIFIED, UNSANDBOXED_REASON)
    unchanged = previous is not None and not previous.gpus_declared and _claim(previous) == _claim(spec)
    if unchanged and previous_status == V.VERIFIED.value:
        return None
    return Verdict(V.PENDING)


def first(spec: domain.MachineSpec) -> Verdict:
    """The status of a machine assessed for the first time (no earlier claim: there is always one)."""
    return on_register(spec, None, None) or Verdict(V.PENDING)


def failed(reason: str) -> Verdict:
    """The check could not run or gave no answer."""
    return Verdict(V.UNVERIFIED, reason[:1000])


def parse_report(output: str) -> protocol.GpuCheckReport | None:
    """The report line of the check's output (the last one, should the command print more); None without one."""
    for line in reversed(output.splitlines()):
        if line.startswith(protocol.GPU_CHECK_MARKER):
            try:
                return protocol.GpuCheckReport.model_validate_json(line[len(protocol.GPU_CHECK_MARKER) :])
            except ValueError:
                return None
    return None


def judge(spec: domain.MachineSpec, report: protocol.GpuCheckReport, *, accept_fake_nvml: bool = False) -> Verdict:
    """Compare what the machine claims with what its check lease saw: count, then each GPU's model and memory."""
    if report.nvml == "fake" and not accept_fake_nvml:
        return Verdict(V.UNVERIFIED, FAKE_NVML_REASON, report=report)
    if report.nvml == "unavailable":
        return Verdict(
            V.MISMATCH,
            "the check lease could not read the GPUs",
            (f"NVML inside the lease failed ({report.nvml_error}) while the machine claims {len(spec.gpus)} GPU(s)",),
            report,
        )
    claimed, seen = _claim(spec), [(g.model, g.memory_mb) for g in sorted(report.gpus, key=lambda g: g.index)]
    differences = []
    if len(claimed) != len(seen):
        differences.append(f"count: the machine claims {len(claimed)} GPU(s), the check lease saw {len(seen)}")
    for index, ((model, memory), (seen_model, seen_memory)) in enumerate(zip(claimed, seen, strict=False)):
        if model != seen_model:
            differences.append(f"GPU {index} model: claimed {model!r}, seen {seen_model!r}")
        if memory > seen_memory * (1 + MEMORY_TOLERANCE):
            differences.append(f"GPU {index} memory: claimed {memory} MiB, seen {seen_memory} MiB")
    if differences:
        return Verdict(
            V.MISMATCH, "what the check lease saw differs from what the machine claims", tuple(differences), report
        )
    return Verdict(V.VERIFIED, report=report)


def _first(row: dict[str, Any]) -> Verdict:
    """A row not assessed yet (gpu_check NULL), read as a registration would assess it."""
    return first(domain.MachineSpec.model_validate_json(row["spec"]))


def status(row: dict[str, Any]) -> str:
    """A machines row's GPU verification status (its spec is parsed only for a row not assessed yet)."""
    return row.get("gpu_check") or _first(row).status.value


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A machines row's verification as the API's GpuVerificationPublic."""
    if row.get("gpu_check") is None:
        first = _first(row)
        current, detail = first.status.value, {"reason": first.reason}
    else:
        current, detail = row["gpu_check"], json.loads(row["gpu_check_detail"]) if row.get("gpu_check_detail") else {}
    return {
        "status": current,
        "checked_at": row.get("gpu_checked_at"),
        "reason": detail.get("reason"),
        "differences": detail.get("differences", []),
        "nvml": detail.get("nvml"),
        "uid": detail.get("uid"),
        "seen": detail.get("seen", []),
        "driver_version": detail.get("driver_version"),
        "benchmarks": detail.get("benchmarks", []),
    }
