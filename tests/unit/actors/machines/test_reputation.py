"""A machine's reliability: uptime share times nodes ended well, each with its prior; and placement's floor."""

import dataclasses

import pytest

from actors.machines import placement, reputation

DAY = 86_400.0


def test_a_new_machine_starts_at_the_prior_and_moves_with_what_it_does():
    assert reputation.score(online_seconds=0, registered_at=0, now=0, completed=0, lost=0) == 0.9
    steady = reputation.score(online_seconds=30 * DAY, registered_at=0, now=30 * DAY, completed=200, lost=0)
    flaky = reputation.score(online_seconds=15 * DAY, registered_at=0, now=30 * DAY, completed=20, lost=10)
    assert steady > 0.99 and flaky < 0.4
    # Uptime never passes 1, and odd inputs (a clock step back, negative seconds) stay in [0, 1].
    assert reputation.score(online_seconds=99 * DAY, registered_at=0, now=DAY, completed=0, lost=0) == 0.9
    assert 0 <= reputation.score(online_seconds=-5, registered_at=10, now=0, completed=0, lost=50) <= 1


def test_a_machines_row_without_history_scores_the_prior():
    assert reputation.of_machine({"registered_at": 100.0}, now=100.0) == 0.9


def _machine(mid, reliability, cpus=8):
    return placement.MachineCapacity(mid, "prov", None, [], cpus, 0.0, 0.01, reliability=reliability)


def test_placement_honours_the_buyers_reliability_floor_and_says_what_is_there():
    machines = [_machine("shaky", 0.5), _machine("solid-a", 0.97), _machine("solid-b", 0.95)]
    got = placement.place(machines, placement.cluster_requests(2, 0, 2, None, min_reliability=0.9))
    assert "shaky" not in {a.machine_id for a in got}
    with pytest.raises(
        placement.InsufficientCapacity,
        match="reliability of at least 0.99 was asked: the most reliable machine that fits the worker has 0.97",
    ):
        placement.place(machines, placement.cluster_requests(1, 0, 2, None, min_reliability=0.99))
    # No floor: every machine is a candidate, as before.
    assert len(placement.place(machines, placement.cluster_requests(3, 0, 2, None))) == 4


def test_capacities_carry_the_rows_reliability():
    rows = [
        {
            "id": "m",
            "provider": "p",
            "gpu_model": None,
            "gpus": 0,
            "cpus": 4,
            "price_per_gpu_hour": 0.0,
            "price_per_cpu_hour": 0.0,
            "reliability": 0.42,
        }
    ]
    assert dataclasses.asdict(placement.capacities(rows, [])[0])["reliability"] == 0.42
