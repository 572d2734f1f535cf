"""Placement keeps a cluster on machines whose leases run one Ray version and one Python minor version: the
cluster's Ray version, and the Python of the machines it is first placed on; its later nodes match them."""

import itertools
import random

import pytest

from actors.machines import placement
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

NEW, OLD = "2.60.0", "2.59.0"


def machine(mid, ray, python, *, cpus=8, gpus=0, price=1.0, cpu_price=0.01):
    return placement.MachineCapacity(
        mid,
        "prov",
        "A100" if gpus else None,
        list(range(gpus)),
        cpus,
        price,
        cpu_price,
        runtime=domain.LeaseRuntime(ray, python),
    )


def runtimes_of(machines, assignments):
    by_id = {m.machine_id: m.runtime for m in machines}
    return {by_id[a.machine_id] for a in assignments}


def test_python_minor_of_a_version():
    assert domain.python_minor("3.11.4") == "3.11" and domain.python_minor("3.12") == "3.12"
    assert domain.python_minor("") == "" and domain.python_minor("x.y") == ""
    spec = domain.MachineSpec(hostname="h", cpus=1, memory_mb=1, ray_version=NEW, python_version="3.11.9")
    assert spec.lease_runtime == domain.LeaseRuntime(NEW, "3.11") and str(spec.lease_runtime) == (
        f"Ray {NEW} on Python 3.11"
    )


def test_a_cluster_never_spans_two_python_versions_even_where_mixing_would_fit():
    # 2 workers of 6 CPUs: one machine of each Python fits one each; only the 3.12 pair fits both.
    machines = [
        machine("a311", NEW, "3.11", cpus=7),
        machine("b312", NEW, "3.12", cpus=7, cpu_price=0.02),
        machine("c312", NEW, "3.12", cpus=7, cpu_price=0.02),
    ]
    got = placement.place(machines, placement.cluster_requests(2, 0, 6, None, ray_version=NEW))
    assert runtimes_of(machines, got) == {domain.LeaseRuntime(NEW, "3.12")}
    assert {a.request.python_version for a in got} == {"3.12"}  # the choice rides on the assignments


def test_the_cluster_runs_its_ray_version_only():
    machines = [machine("old", OLD, "3.11", cpu_price=0.001), machine("new", NEW, "3.11")]
    got = placement.place(machines, placement.cluster_requests(1, 0, 1, None, ray_version=NEW))
    assert {a.machine_id for a in got} == {"new"}
    with pytest.raises(placement.InsufficientCapacity) as exc:
        placement.place(machines, placement.cluster_requests(1, 0, 1, None, ray_version="2.61.0"))
    message = str(exc.value)
    assert "not enough capacity" in message and "no online machine runs Ray 2.61.0" in message
    assert f"Ray {OLD} on Python 3.11" in message and f"Ray {NEW} on Python 3.11" in message


def test_among_the_runtimes_that_fit_the_cheapest_placement_wins():
    machines = [
        machine("dear", NEW, "3.11", cpus=16, cpu_price=0.05),
        machine("cheap1", NEW, "3.12", cpus=4, cpu_price=0.01),
        machine("cheap2", NEW, "3.12", cpus=4, cpu_price=0.01),
    ]
    got = placement.place(machines, placement.cluster_requests(2, 0, 2, None, ray_version=NEW))
    assert runtimes_of(machines, got) == {domain.LeaseRuntime(NEW, "3.12")}


def test_a_later_node_goes_only_where_the_cluster_s_runtime_runs():
    spec = ClusterSpec(num_workers=2, duration_s=600, ray_version=NEW, python_version="3.11")
    request = placement.spec_request(spec, "worker")
    assert request.runtime == domain.LeaseRuntime(NEW, "3.11")
    machines = [machine("failed", NEW, "3.11"), machine("other-python", NEW, "3.12", cpu_price=0.0)]
    assert placement.replacement(machines, request, {"failed"}).machine_id == "failed"  # never the 3.12 one
    with pytest.raises(placement.InsufficientCapacity) as exc:
        placement.place(machines[1:], [request])
    assert f"here Ray {NEW} on Python 3.11: 0 of the 1 machine(s) run it" in str(exc.value)


def test_a_machine_whose_versions_are_unknown_takes_no_cluster_of_a_known_version():
    machines = [machine("unknown", "", "")]
    with pytest.raises(placement.InsufficientCapacity, match=r"Ray \(unknown\) on Python \(unknown\)"):
        placement.place(machines, placement.cluster_requests(1, 0, 1, None, ray_version=NEW))


@pytest.mark.parametrize("seed", range(60))
def test_mixed_fleets_never_give_a_cluster_two_runtimes(seed):
    rng = random.Random(seed)
    runtimes = list(itertools.product([NEW, OLD], ["3.10", "3.11", "3.12"]))
    machines = [
        machine(
            f"m{i}",
            *rng.choice(runtimes),
            cpus=rng.choice([1, 2, 4, 8]),
            gpus=rng.choice([0, 0, 1, 2]),
            price=rng.choice([0.5, 1.0]),
            cpu_price=rng.choice([0.01, 0.02]),
        )
        for i in range(rng.randint(1, 25))
    ]
    ray = rng.choice([NEW, OLD, None])
    requests = placement.cluster_requests(
        rng.randint(1, 6), rng.choice([0, 1]), rng.choice([1, 2]), None, ray_version=ray
    )
    try:
        got = placement.place(machines, requests)
    except placement.InsufficientCapacity:
        # Short: no single runtime has room, whatever the fleet holds in all.
        for runtime in {m.runtime for m in machines if ray in (None, m.runtime.ray)}:
            with pytest.raises(placement.InsufficientCapacity):
                placement.place(machines, [r.pinned(runtime) for r in requests])
        return
    (runtime,) = runtimes_of(machines, got)
    assert ray is None or runtime.ray == ray
    assert {a.request.runtime for a in got} == {runtime}


def test_of_equally_cheap_runtimes_the_newest_is_taken():
    machines = [machine("py310", NEW, "3.10"), machine("py312", NEW, "3.12"), machine("py39", NEW, "3.9")]
    got = placement.place(machines, placement.cluster_requests(1, 0, 1, None, ray_version=NEW))
    assert {a.machine_id for a in got} == {"py312"}
    newest = sorted((m.runtime for m in machines), key=domain.LeaseRuntime.newest_first)
    assert [r.python for r in newest] == ["3.12", "3.10", "3.9"]  # by number, not by text
