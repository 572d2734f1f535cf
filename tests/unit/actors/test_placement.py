import pytest

from actors import placement


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
    rows = [{"id": "m", "provider": "p", "gpu_model": "T4", "gpus": 2, "cpus": 4,
             "price_per_gpu_hour": 1.0, "price_per_cpu_hour": 0.0}]
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
