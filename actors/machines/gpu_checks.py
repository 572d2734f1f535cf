"""GpuChecker: runs the GPU check lease on machines whose check is due, and records the verdict.

A check lease is a lease like a buyer's node (same protocol, same agent path, same sandbox) of purpose
protocol.GPU_CHECK_LEASE: it holds every GPU of the machine, runs one command
(protocol.GPU_CHECK_COMMAND, which prints what NVML shows inside the sandbox and a small matmul's time)
and closes. It belongs to no cluster and is never billed (no leases row). A machine whose check is due or
running takes no buyer lease (cluster_store.online_machines), and a check starts only under the placement
lock on a machine no lease holds anything of, so the two never share a GPU.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Protocol

from actors.db import cluster_store as cstore
from actors.db import database
from actors.machines import gpu_verification
from actors.settings import PlatformSettings
from dcl_core import domain, ids, protocol

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 60.0
CHECK_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 30.0


class WorkSender(Protocol):
    async def send_work(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult: ...


class GpuChecker:
    """Plain class; the ClusterManager owns one and runs run_once from its loop."""

    def __init__(
        self,
        store: cstore.ClusterStore,
        settings: PlatformSettings,
        *,
        registry: WorkSender,
        placement_lock: database.Serial,
        clock: Callable[[], float],
    ):
        self._store = store
        self._settings = settings
        self._registry = registry
        self._placement_lock = placement_lock
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}  # machine id → its check in flight

    def in_flight(self) -> dict[str, asyncio.Task[None]]:
        return dict(self._tasks)

    async def recover(self) -> None:
        """Checks cut short by a restart are due again; machines from before verification existed get their
        first status."""
        restarted = await self._store.restart_gpu_checks()
        if restarted:
            logger.info("%d GPU check(s) cut short by a restart are due again", restarted)
        for row in await self._store.unassessed_machines():
            verdict = gpu_verification.first(domain.MachineSpec.model_validate_json(row["spec"]))
            await self._store.assess_machine(row["id"], verdict.status, verdict.detail_json())

    async def run_once(self) -> list[str]:
        """Starts the checks that are due and can run now; returns their machine ids (they run in tasks)."""
        started = []
        async with self._placement_lock:  # no placement between "no lease holds it" and "checking"
            await self._store.restart_gpu_checks(running=self._tasks)  # an outcome that could not be written
            for row in await self._store.due_gpu_checks(self._settings.online_cutoff(self._clock())):
                if row["id"] in self._tasks:
                    continue
                lease_id = ids.new_lease_id()
                if await self._store.begin_gpu_check(row["id"], lease_id):
                    started.append((row["id"], domain.MachineSpec.model_validate_json(row["spec"]), lease_id))
        for machine_id, spec, lease_id in started:
            task = asyncio.get_running_loop().create_task(self._check(machine_id, spec, lease_id))
            self._tasks[machine_id] = task
            task.add_done_callback(functools.partial(self._done, machine_id))
        return [machine_id for machine_id, _, _ in started]

    def _done(self, machine_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(machine_id, None)

    async def _check(self, machine_id: str, spec: domain.MachineSpec, lease_id: str) -> None:
        try:
            verdict = await self._run(machine_id, spec, lease_id)
        except Exception as exc:
            logger.exception("GPU check of machine %s failed", machine_id)
            verdict = gpu_verification.failed(f"the check failed on the platform: {type(exc).__name__}: {exc}")
        try:
            recorded = await self._store.finish_gpu_check(
                machine_id, lease_id, verdict.status, verdict.detail_json(), self._clock()
            )
        except Exception:
            logger.exception("could not record the GPU check of machine %s; it is due again", machine_id)
            return
        if recorded:
            logger.info(
                "GPU check of machine %s: %s%s",
                machine_id,
                verdict.status.value,
                f" ({'; '.join(verdict.differences) or verdict.reason})" if verdict.reason else "",
            )
        else:
            logger.info("GPU check of machine %s is moot: the machine registered again meanwhile", machine_id)

    async def _run(self, machine_id: str, spec: domain.MachineSpec, lease_id: str) -> gpu_verification.Verdict:
        opening = protocol.LeaseOpen(
            lease_id=lease_id,
            purpose=protocol.GPU_CHECK_LEASE,
            gpu_indices=sorted(g.index for g in spec.gpus),
            cpus=1,
            ray_auth_token=ids.new_ray_auth_token(),
        )  # unused: the check starts no Ray
        opened = await self._registry.send_work(machine_id, protocol.LEASE_OPEN, opening, timeout_s=OPEN_TIMEOUT_S)
        if not opened.ok:
            return gpu_verification.failed(f"the check lease did not open: {_tail(opened.output)}")
        try:
            command = protocol.LeaseExec(
                lease_id=lease_id, op="run", cmd=protocol.GPU_CHECK_COMMAND, timeout_s=CHECK_TIMEOUT_S
            )
            ran = await self._registry.send_work(
                machine_id, protocol.LEASE_EXEC, command, timeout_s=CHECK_TIMEOUT_S + 10
            )
        finally:
            closed = await self._registry.send_work(
                machine_id,
                protocol.LEASE_CLOSE,
                protocol.LeaseClose(lease_id=lease_id),
                timeout_s=CLOSE_TIMEOUT_S,
            )
            if not closed.ok:  # the agent closes it when its heartbeat hears no one holds it
                logger.warning(
                    "GPU check lease %s on machine %s did not close: %s",
                    lease_id,
                    machine_id,
                    _tail(closed.output),
                )
        report = gpu_verification.parse_report(ran.output)
        if report is None:
            return gpu_verification.failed(f"the check printed no report (exit {ran.exit_code}): {_tail(ran.output)}")
        return gpu_verification.judge(spec, report, accept_fake_nvml=self._settings.gpu_check_accepts_fake_nvml)


def _tail(text: str, limit: int = 500) -> str:
    text = (text or "").strip()
    return text[-limit:] or "no output"
