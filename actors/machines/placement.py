"""Deciding which machines host a cluster's nodes (pure functions: decide here, act elsewhere)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from dcl_core import domain, ids
from dcl_core.cluster_spec import ClusterSpec

HEAD_CPUS = 1  # a head runs no buyer tasks (num-cpus=0) but its GCS, dashboard and autoscaler need a core


@dataclasses.dataclass(slots=True)
class MachineCapacity:
    """What is left of one online machine after its current leases."""

    machine_id: str
    provider: str
    gpu_model: str | None
    free_gpus: list[int]  # device indices not leased
    free_cpus: int
    price_per_gpu_hour: float = 0.0
    price_per_cpu_hour: float = 0.0
    leases_of_cluster: int = 0  # spread: prefer machines this cluster does not use yet
    reliability: float = 1.0  # actors.machines.reputation's score
    gpus_verified: bool = False  # a check lease saw the GPUs it claims (domain.GpuVerification.VERIFIED)
    runtime: domain.LeaseRuntime = domain.LeaseRuntime("", "")  # the Ray and Python a lease runs there


@dataclasses.dataclass(frozen=True)
class NodeRequest:
    role: str  # a domain.NodeRole value
    gpus: int
    cpus: int
    gpu_model: str | None = None
    # The buyer's price ceiling for the rate this node is billed at: GPU leases per GPU-hour, CPU-only
    # leases (heads included) per CPU-hour. None: any price.
    max_price: float | None = None
    min_reliability: float | None = None  # the buyer's floor: None, any machine
    verified_only: bool = False  # only machines whose GPUs were verified (GPU nodes)
    # The cluster's Ray version and Python minor version (None: not chosen yet; place chooses one machine set
    # that runs the same for every node of the cluster).
    ray_version: str | None = None
    python_version: str | None = None

    @property
    def runtime(self) -> domain.LeaseRuntime | None:
        """What every node of the cluster runs, once both are chosen."""
        if self.ray_version is None or self.python_version is None:
            return None
        return domain.LeaseRuntime(self.ray_version, self.python_version)

    def runs_on(self, runtime: domain.LeaseRuntime) -> bool:
        """Whether a machine whose leases run `runtime` may take this node."""
        return (self.ray_version is None or runtime.ray == self.ray_version) and (
            self.python_version is None or runtime.python == self.python_version
        )

    def pinned(self, runtime: domain.LeaseRuntime) -> NodeRequest:
        return dataclasses.replace(self, ray_version=runtime.ray, python_version=runtime.python)

    def price_of(self, m: MachineCapacity) -> float:
        """What this node costs per billed unit-hour on machine m."""
        return m.price_per_gpu_hour if self.gpus else m.price_per_cpu_hour

    @property
    def price_unit(self) -> str:
        return "GPU-hour" if self.gpus else "CPU-hour"


@dataclasses.dataclass(frozen=True)
class Assignment:
    request: NodeRequest
    machine_id: str
    gpu_indices: tuple[int, ...]
    price_per_gpu_hour: float = 0.0
    price_per_cpu_hour: float = 0.0


class InsufficientCapacity(Exception):
    def __init__(self, message: str, available: dict[str, Any]):
        super().__init__(message)
        self.available = available


def capacities(
    machines: list[dict[str, Any]], active_leases: list[dict[str, Any]], head_cpus: int = HEAD_CPUS
) -> list[MachineCapacity]:
    """Machines rows (online, fresh) and the leases holding capacity → what each machine has left."""
    used_gpus: dict[str, set[int]] = {}
    used_cpus: dict[str, int] = {}
    for lease in active_leases:
        used_gpus.setdefault(lease["machine_id"], set()).update(lease["gpus"])
        used_cpus[lease["machine_id"]] = used_cpus.get(lease["machine_id"], 0) + lease["cpus"]
    result = []
    for m in machines:
        mid, gpus = m["id"], m["gpus"]
        used = used_gpus.get(mid)
        result.append(
            MachineCapacity(
                mid,
                m["provider"],
                m["gpu_model"] if gpus else None,
                [i for i in range(gpus) if i not in used] if used else list(range(gpus)),
                m["cpus"] - used_cpus.get(mid, 0),
                m["price_per_gpu_hour"],
                m["price_per_cpu_hour"],
                reliability=m.get("reliability", 1.0),
                gpus_verified=m.get("gpu_check") == domain.GpuVerification.VERIFIED.value,
                runtime=runtime_of(m),
            )
        )
    return result


def runtime_of(machine: dict[str, Any]) -> domain.LeaseRuntime:
    """A machines row's lease runtime (the columns placement reads)."""
    return domain.LeaseRuntime(machine.get("ray_version") or "", machine.get("python_version") or "")


def node_request(
    role: str,
    gpus_per_worker: int,
    cpus_per_worker: int,
    gpu_model: str | None,
    *,
    max_price_per_gpu_hour: float | None = None,
    max_price_per_cpu_hour: float | None = None,
    min_reliability: float | None = None,
    verified_gpus_only: bool = False,
    ray_version: str | None = None,
    python_version: str | None = None,
) -> NodeRequest:
    """One node of a cluster: the head (CPU-only, billed per CPU-hour) or a worker as the spec asks."""
    if role == domain.NodeRole.HEAD:
        return NodeRequest(
            domain.NodeRole.HEAD.value,
            0,
            HEAD_CPUS,
            max_price=max_price_per_cpu_hour,
            min_reliability=min_reliability,
            ray_version=ray_version,
            python_version=python_version,
        )
    return NodeRequest(
        domain.NodeRole.WORKER.value,
        gpus_per_worker,
        cpus_per_worker,
        gpu_model if gpus_per_worker else None,
        max_price=max_price_per_gpu_hour if gpus_per_worker else max_price_per_cpu_hour,
        min_reliability=min_reliability,
        verified_only=verified_gpus_only and gpus_per_worker > 0,
        ray_version=ray_version,
        python_version=python_version,
    )


def cluster_requests(
    num_workers: int,
    gpus_per_worker: int,
    cpus_per_worker: int,
    gpu_model: str | None,
    *,
    with_head: bool = True,
    max_price_per_gpu_hour: float | None = None,
    max_price_per_cpu_hour: float | None = None,
    min_reliability: float | None = None,
    verified_gpus_only: bool = False,
    ray_version: str | None = None,
    python_version: str | None = None,
) -> list[NodeRequest]:
    worker, head = (
        node_request(
            role,
            gpus_per_worker,
            cpus_per_worker,
            gpu_model,
            max_price_per_gpu_hour=max_price_per_gpu_hour,
            max_price_per_cpu_hour=max_price_per_cpu_hour,
            min_reliability=min_reliability,
            verified_gpus_only=verified_gpus_only,
            ray_version=ray_version,
            python_version=python_version,
        )
        for role in (domain.NodeRole.WORKER, domain.NodeRole.HEAD)
    )
    return ([head] if with_head else []) + [worker] * num_workers


def spec_request(spec: ClusterSpec, role: str) -> NodeRequest:
    """One node of the cluster the spec describes, at its buyer's price ceilings, on its Ray and Python (stored
    with the spec once its nodes were first placed)."""
    return node_request(
        role,
        spec.gpus_per_worker,
        spec.cpus_per_worker,
        spec.gpu_model,
        max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
        max_price_per_cpu_hour=spec.max_price_per_cpu_hour,
        min_reliability=spec.min_reliability,
        verified_gpus_only=spec.verified_gpus_only,
        ray_version=spec.ray_version,
        python_version=spec.python_version,
    )


def spec_requests(spec: ClusterSpec) -> list[NodeRequest]:
    """The head and every worker the spec asks for."""
    worker = spec_request(spec, domain.NodeRole.WORKER)
    return [spec_request(spec, domain.NodeRole.HEAD)] + [worker] * spec.num_workers


def _fits_resources(m: MachineCapacity, r: NodeRequest) -> bool:
    if r.gpus and (len(m.free_gpus) < r.gpus or (r.gpu_model and m.gpu_model != r.gpu_model)):
        return False
    return m.free_cpus >= r.cpus


def _trusted(m: MachineCapacity, r: NodeRequest) -> bool:
    """The buyer's floors on the machine itself: its reliability, and (GPU nodes) verified GPUs."""
    reliable = r.min_reliability is None or m.reliability >= r.min_reliability
    return reliable and (not r.verified_only or m.gpus_verified)


def fits(m: MachineCapacity, r: NodeRequest) -> bool:
    return (
        r.runs_on(m.runtime)
        and _fits_resources(m, r)
        and (r.max_price is None or r.price_of(m) <= r.max_price)
        and _trusted(m, r)
    )


def rank(r: NodeRequest) -> Callable[[MachineCapacity], tuple[Any, ...]]:
    """How a request ranks the machines that fit it (least first). Workers spread over machines (fewest
    of this cluster's nodes, then cheapest, then roomiest); the head goes where it wastes the fewest GPUs."""
    if r.role == domain.NodeRole.HEAD:
        return lambda m: (len(m.free_gpus), m.leases_of_cluster, -m.free_cpus)
    return lambda m: (m.leases_of_cluster, r.price_of(m), -len(m.free_gpus), -m.free_cpus)


def place(machines: list[MachineCapacity], requests: list[NodeRequest]) -> list[Assignment]:
    """Assigns every request to a machine, or raises InsufficientCapacity naming what is available.

    Every node of a cluster runs one Ray version and Python minor version: requests that have not chosen
    theirs are placed on the machines of each runtime they may run on in turn, and the cheapest placement
    wins (then the newest Ray, then the newest Python). Within one runtime, workers go first, biggest first;
    the head last; each on the machine it ranks first (rank).
    """
    if not machines or all(r.runtime is not None for r in requests):
        return _place(machines, requests)
    runtimes = sorted(
        {m.runtime for m in machines if all(r.runs_on(m.runtime) for r in requests)},
        key=domain.LeaseRuntime.newest_first,
    )
    placed, failures = [], []
    for runtime in runtimes:
        try:
            placed.append(_place(machines, [r.pinned(runtime) for r in requests]))
        except InsufficientCapacity as exc:
            failures.append(exc)
    if placed:
        return min(placed, key=_hourly_cost)  # min keeps the first of equal costs: the newest
    if failures:
        raise failures[0]  # the newest runtime's shortage, naming it
    raise InsufficientCapacity(_no_runtime_message(machines, requests), available=summarize(machines))


def _hourly_cost(assignments: list[Assignment]) -> float:
    return sum(
        a.price_per_gpu_hour * a.request.gpus if a.request.gpus else a.price_per_cpu_hour * a.request.cpus
        for a in assignments
    )


def _place(machines: list[MachineCapacity], requests: list[NodeRequest]) -> list[Assignment]:
    # Copy-on-pick: of 10,000 machines only the few chosen are copied and changed.
    picked: dict[str, MachineCapacity] = {}
    ordered = sorted(requests, key=lambda r: (r.role == domain.NodeRole.HEAD, -r.gpus, -r.cpus))
    assignments = []
    for r in ordered:
        fitting = [v for m in machines if fits(v := picked.get(m.machine_id, m), r)]
        if not fitting:
            filtered = r.max_price is not None or r.min_reliability is not None or r.verified_only
            left = [picked.get(m.machine_id, m) for m in machines] if filtered else machines
            raise InsufficientCapacity(_shortage_message(machines, requests, r, left), available=summarize(machines))
        best = min(fitting, key=rank(r))
        if best.machine_id not in picked:
            best = picked[best.machine_id] = dataclasses.replace(best, free_gpus=list(best.free_gpus))
        taken = tuple(best.free_gpus[: r.gpus])
        best.free_gpus = best.free_gpus[r.gpus :]
        best.free_cpus -= r.cpus
        best.leases_of_cluster += 1
        assignments.append(Assignment(r, best.machine_id, taken, best.price_per_gpu_hour, best.price_per_cpu_hour))
    return assignments


def replacement(machines: list[MachineCapacity], request: NodeRequest, failed: set[str]) -> Assignment:
    """Where a node goes after the machines in `failed` could not open it: another machine where one
    fits, else one of the failed ones again (their fault may have been passing). Raises
    InsufficientCapacity when nothing fits at all."""
    others = [m for m in machines if m.machine_id not in failed]
    try:
        return place(others, [request])[0]
    except InsufficientCapacity:
        return place(machines, [request])[0]


def summarize(machines: list[MachineCapacity]) -> dict[str, Any]:
    """Free capacity by GPU model, for the 409 answer."""
    by_model: dict[str, dict[str, Any]] = {}
    for m in machines:
        key = m.gpu_model or "cpu-only"
        entry = by_model.setdefault(
            key, {"machines": 0, "free_gpus": 0, "free_cpus": 0, "largest_free_gpus_on_one_machine": 0}
        )
        entry["machines"] += 1
        entry["free_gpus"] += len(m.free_gpus)
        entry["free_cpus"] += max(m.free_cpus, 0)
        entry["largest_free_gpus_on_one_machine"] = max(entry["largest_free_gpus_on_one_machine"], len(m.free_gpus))
    return by_model


def _shortage_message(
    machines: list[MachineCapacity], requests: list[NodeRequest], failed: NodeRequest, left: list[MachineCapacity]
) -> str:
    workers = [r for r in requests if r.role == domain.NodeRole.WORKER]
    want = f"{len(workers)} worker(s)"
    if workers and workers[0].gpus:
        want += (
            f" with {workers[0].gpus} {workers[0].gpu_model or 'any-model'} GPU(s) and {workers[0].cpus} CPU(s) each"
        )
    elif workers:
        want += f" with {workers[0].cpus} CPU(s) each"
    if not machines:
        return f"not enough capacity for {want} plus a head: no machine is online"
    free_gpus = sum(len(m.free_gpus) for m in machines)
    free_cpus = sum(max(m.free_cpus, 0) for m in machines)
    message = (
        f"not enough capacity for {want} plus a head ({failed.role} could not be placed); "
        f"online now: {len(machines)} machine(s) with {free_gpus} free GPU(s) and {free_cpus} free CPU(s)"
    )
    if failed.runtime is not None:
        running = sum(1 for m in machines if m.runtime == failed.runtime)
        message += (
            f"; every node of a cluster runs the same Ray and Python minor version, here {failed.runtime}: "
            f"{running} of the {len(machines)} machine(s) run it"
        )
    if failed.min_reliability is not None:
        reliabilities = [m.reliability for m in left if _fits_resources(m, failed)]
        message += f"; a reliability of at least {failed.min_reliability:g} was asked: " + (
            f"the most reliable machine that fits the {failed.role} has {max(reliabilities):g}"
            if reliabilities
            else f"no machine fits the {failed.role} at any reliability"
        )
    if failed.verified_only:
        fitting = [m for m in left if _fits_resources(m, failed)]
        message += (
            f"; machines with verified GPUs were asked: {sum(m.gpus_verified for m in fitting)} of the "
            f"{len(fitting)} machine(s) that fit the {failed.role} have them"
        )
    if failed.max_price is not None:
        prices = [failed.price_of(m) for m in left if _fits_resources(m, failed) and _trusted(m, failed)]
        message += f"; at most ${failed.max_price:g} per {failed.price_unit} was asked: " + (
            f"the cheapest machine that fits the {failed.role} costs ${min(prices):g} per {failed.price_unit}"
            if prices
            else f"no machine fits the {failed.role} at any price"
        )
    return message


def _no_runtime_message(machines: list[MachineCapacity], requests: list[NodeRequest]) -> str:
    r = requests[0]
    asked = f"Ray {r.ray_version}" if r.ray_version is not None else "one Ray version"
    if r.python_version is not None:
        asked += f" on Python {r.python_version}"
    counts = collections.Counter(str(m.runtime) for m in machines)
    return f"not enough capacity: no online machine runs {asked}; online: " + ", ".join(
        f"{n} machine(s) with {runtime}" for runtime, n in sorted(counts.items())
    )


def lease_row(a: Assignment) -> dict[str, Any]:
    """The new lease row of a decided assignment (its id made here)."""
    return {
        "id": ids.new_lease_id(),
        "machine_id": a.machine_id,
        "role": a.request.role,
        "gpus": list(a.gpu_indices),
        "cpus": a.request.cpus,
        "price_per_gpu_hour": a.price_per_gpu_hour,
        "price_per_cpu_hour": a.price_per_cpu_hour,
    }
