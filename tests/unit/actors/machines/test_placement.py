import pytest

from actors.machines import placement
from dcl_core.cluster_spec import ClusterSpec


def machine(mid, gpus=0, model=None, cpus=8, price=1.0):
    return placement.MachineCapacity(mid, "prov", model if gpus else None, list(range(gpus)), cpus, price, 0.01)


def test_workers_spread_over_machines_and_head_avoids_gpus():
    machines = [machine("gpu1", 2, "A100"), machine("gpu2", 2, "A100"), machine("cpu", 0)]
    got = placement.place(machines, placement.cluster_requests(2, 1, 1, "A100"))
    workers = [a for a in got if a.request.role == "worker"]
    assert sorted(a.machine_id for a in workers) == ["gpu1", "gpu2"]
    assert all(len(a.gpu_indices) == 1 for a in workers)
    (head,) = [a for a in got if a.request.role == "head"]
    assert head.machine_id == "cpu" and head.gpu_indices == ()


def test_gpus_are_never_leased_twice():
    machines = [machine("m", 4, "T4")]
    got = placement.place(machines, placement.cluster_requests(2, 2, 1, "T4"))
    indices = [i for a in got for i in a.gpu_indices]
    assert sorted(indices) == [0, 1, 2, 3]


def test_existing_leases_reduce_capacity():
    rows = [
        {
            "id": "m",
            "provider": "p",
            "gpu_model": "T4",
            "gpus": 2,
            "cpus": 4,
            "price_per_gpu_hour": 1.0,
            "price_per_cpu_hour": 0.0,
        }
    ]
    caps = placement.capacities(rows, [{"machine_id": "m", "gpus": [0], "cpus": 3}])
    assert caps[0].free_gpus == [1] and caps[0].free_cpus == 1
    with pytest.raises(placement.InsufficientCapacity) as caught:
        placement.place(caps, placement.cluster_requests(2, 1, 1, "T4"))
    assert "1 free GPU" in str(caught.value) and caught.value.available["T4"]["free_gpus"] == 1


def test_wrong_model_and_no_machines_are_reported():
    with pytest.raises(placement.InsufficientCapacity, match="no machine is online"):
        placement.place([], placement.cluster_requests(1, 0, 1, None))
    with pytest.raises(placement.InsufficientCapacity, match="H100"):
        placement.place([machine("m", 8, "A100")], placement.cluster_requests(1, 1, 1, "H100"))


def test_cheapest_machine_first_when_spread_is_equal():
    machines = [machine("dear", 1, "T4", price=3.0), machine("cheap", 1, "T4", price=0.5), machine("cpu")]
    got = placement.place(machines, placement.cluster_requests(1, 1, 1, "T4"))
    assert [a.machine_id for a in got if a.request.role == "worker"] == ["cheap"]


# --- the buyer's price ceiling -------------------------------------------------------------


def test_max_price_is_honoured_and_the_409_names_the_cheapest_price():
    machines = [machine("dear", 1, "A100", price=10_000.0), machine("fair", 1, "A100", price=2.5)]
    got = placement.place(machines, placement.cluster_requests(1, 1, 1, "A100", max_price_per_gpu_hour=3.0))
    assert [a.machine_id for a in got if a.request.role == "worker"] == ["fair"]
    with pytest.raises(placement.InsufficientCapacity) as caught:
        placement.place(machines, placement.cluster_requests(2, 1, 1, "A100", max_price_per_gpu_hour=3.0))
    assert "at most $3 per GPU-hour" in str(caught.value) and "costs $10000 per GPU-hour" in str(caught.value)
    with pytest.raises(placement.InsufficientCapacity, match=r"costs \$2.5 per GPU-hour"):
        placement.place(machines, placement.cluster_requests(1, 1, 1, "A100", max_price_per_gpu_hour=1.0))


def test_cpu_nodes_and_the_head_are_held_to_the_cpu_hour_ceiling():
    cheap = placement.MachineCapacity("cheap", "p", None, [], 8, 0.0, 0.05)
    dear = placement.MachineCapacity("dear", "p", None, [], 8, 0.0, 5.0)
    head = placement.node_request("head", 0, 1, None, max_price_per_cpu_hour=0.1)
    assert head.cpus == placement.HEAD_CPUS and head.max_price == 0.1
    got = placement.place([dear, cheap], placement.cluster_requests(2, 0, 2, None, max_price_per_cpu_hour=0.1))
    assert {a.machine_id for a in got} == {"cheap"}
    with pytest.raises(placement.InsufficientCapacity, match="per CPU-hour"):
        placement.place([dear], [head])


# --- a node a machine failed to open ---------------------------------------------------------


def test_replacement_avoids_failed_machines_and_falls_back_to_them():
    machines = [machine("a", cpus=4), machine("b", cpus=4)]
    request = placement.node_request("head", 0, 1, None)
    assert placement.replacement(machines, request, {"a"}).machine_id == "b"
    assert placement.replacement(machines, request, {"b"}).machine_id == "a"
    # Nothing else fits: the failed machine is tried again (its fault may have passed).
    assert placement.replacement(machines, request, {"a", "b"}).machine_id in {"a", "b"}
    full = [machine("a", cpus=0), machine("b", cpus=0)]
    with pytest.raises(placement.InsufficientCapacity):
        placement.replacement(full, request, {"a"})


def test_verified_gpus_only_keeps_gpu_workers_to_verified_machines_and_names_the_shortage():
    rows = [
        {
            "id": mid,
            "provider": "p",
            "gpu_model": "H100",
            "gpus": 2,
            "cpus": 8,
            "price_per_gpu_hour": price,
            "price_per_cpu_hour": 0.01,
            "gpu_check": check,
        }
        for mid, price, check in (
            ("cheap-declared", 1.0, "declared"),
            ("verified", 3.0, "verified"),
            ("mismatched", 1.0, "mismatch"),
        )
    ]
    caps = placement.capacities(rows, [])
    got = placement.place(caps, placement.cluster_requests(1, 2, 1, "H100", verified_gpus_only=True))
    (worker,) = [a for a in got if a.request.role == "worker"]
    assert worker.machine_id == "verified"  # not the cheaper declared one
    (head,) = [a for a in got if a.request.role == "head"]
    assert head.request.verified_only is False  # the head holds no GPU: any machine
    with pytest.raises(
        placement.InsufficientCapacity, match="machines with verified GPUs were asked: 0 of the 2 machine"
    ):
        placement.place(caps, placement.cluster_requests(2, 2, 1, "H100", verified_gpus_only=True))


def test_a_specs_requests_are_its_head_and_workers_at_its_ceilings():
    spec = ClusterSpec(
        num_workers=2,
        gpus_per_worker=1,
        gpu_model="A100",
        duration_s=600,
        max_price_per_gpu_hour=2.0,
        max_price_per_cpu_hour=0.5,
        min_reliability=0.8,
        verified_gpus_only=True,
    )
    head, *workers = placement.spec_requests(spec)
    assert head == placement.node_request(
        "head", 1, spec.cpus_per_worker, "A100", max_price_per_cpu_hour=0.5, min_reliability=0.8
    )
    assert workers == [placement.spec_request(spec, "worker")] * 2
    assert workers[0].max_price == 2.0 and workers[0].verified_only and workers[0].gpu_model == "A100"
