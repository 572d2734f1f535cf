"""The machine index: placement among its candidates chooses what placement among every online machine
chooses, whatever the fleet, its leases and the request, as leases come and go; changed rows move in the
sorted orders."""

import random

import pytest

from actors.machines import machine_index, placement, reputation

MODELS = ["H100", "A100", None]
# What leases run on the fleet's machines: a cluster's nodes all run one of these (the last: an unknown one).
RUNTIMES = [("2.60.0", "3.11"), ("2.60.0", "3.12"), ("2.59.0", "3.11"), ("", "")]
NOW = 1_000_000.0


def fleet(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        gpus = rng.choice([0, 1, 2, 4, 8])
        rows.append(
            {
                "id": f"m-{i:04d}",
                "provider": f"p{i % 3}",
                "gpu_model": rng.choice(MODELS[:2]) if gpus else None,
                "gpus": gpus,
                "cpus": rng.choice([2, 8, 16, 64]),
                "price_per_gpu_hour": rng.choice([0.5, 1.0, 1.5, 2.0]),  # ties on purpose
                "price_per_cpu_hour": rng.choice([0.01, 0.02, 0.05]),
                "registered_at": NOW - rng.choice([0, 600, 86_400]),
                "online_seconds": rng.choice([0.0, 300.0, 80_000.0]),
                "leases_completed": rng.randrange(5),
                "leases_lost": rng.randrange(3),
                "gpu_check": rng.choice([None, "verified", "declared"]) if gpus else "no_gpus",
            }
        )
        rows[-1]["ray_version"], rows[-1]["python_version"] = rng.choice(RUNTIMES)
    return rows


def leases(rng: random.Random, rows: list[dict], count: int, cluster_ids: list[str]) -> list[dict]:
    out = []
    for j in range(count):
        row = rng.choice(rows)
        used = rng.sample(range(row["gpus"]), rng.randint(0, row["gpus"]))
        out.append(
            {
                "id": f"l-{j:04d}",
                "machine_id": row["id"],
                "cluster_id": rng.choice(cluster_ids),
                "gpus": used,
                "cpus": rng.randint(1, 2),
            }
        )
    return out


def request_set(rng: random.Random) -> list[placement.NodeRequest]:
    gpus = rng.choice([0, 1, 2, 4, 8])
    return placement.cluster_requests(
        rng.randint(1, 4),
        gpus,
        rng.choice([1, 2, 8]),
        rng.choice(MODELS) if gpus else None,
        max_price_per_gpu_hour=rng.choice([None, 1.0, 1.5]),
        max_price_per_cpu_hour=rng.choice([None, 0.02]),
        min_reliability=rng.choice([None, None, 0.8, 0.9]),
        verified_gpus_only=rng.random() < 0.3,
        ray_version=rng.choice([None, "2.60.0", "2.60.0", "2.59.0", "9.9.9"]),
        python_version=rng.choice([None, None, "3.11"]),
    )


def everything(rows, holdings, offline, cluster_id):
    """What the manager's slow path gives placement: every online machine."""
    online = [dict(r, reliability=reputation.of_machine(r, NOW)) for r in rows if r["id"] not in offline]
    caps = placement.capacities(online, holdings)
    for cap in caps:
        cap.leases_of_cluster = sum(
            1 for h in holdings if h["machine_id"] == cap.machine_id and h["cluster_id"] == cluster_id
        )
    return caps


def outcome(machines, requests):
    try:
        return [(a.request, a.machine_id, a.gpu_indices) for a in placement.place(machines, requests)]
    except placement.InsufficientCapacity:
        return "short"


def index_of(rows, held=()) -> machine_index.MachineIndex:
    index = machine_index.MachineIndex()
    index.load([dict(r) for r in rows], NOW)
    index.set_leases([h["id"] for h in held], list(held))
    return index


def assert_same_choice(index, rows, held, offline, cluster_id, requests):
    # In the fleet's order (by id), as the store lists them: ties then break alike (the index's orders end with the id).
    candidates = sorted(index.candidates(requests, offline, NOW, cluster_id), key=lambda c: c.machine_id)
    assert outcome(candidates, requests) == outcome(everything(rows, held, offline, cluster_id), requests)


@pytest.mark.parametrize("seed", range(120))
def test_placement_among_the_candidates_is_placement_among_every_machine(seed):
    rng = random.Random(seed)
    rows = fleet(rng, rng.choice([5, 30, 120]))
    clusters = ["c-new", "c-a", "c-b"]
    held = leases(rng, rows, rng.randrange(0, len(rows)), clusters)
    offline = {r["id"] for r in rows if rng.random() < 0.15}
    index = index_of(rows)
    for step in range(3):  # leases come and go: the index follows each change
        cluster_id = rng.choice(clusters)  # a new cluster, or one placing more nodes (spread counts)
        now_held = [h for h in held if rng.random() < 0.7] + leases(rng, rows, rng.randrange(0, 5), clusters)
        now_held = list(
            {h["id"] + str(step): dict(h, id=h["id"] + str(step)) if h not in held else h for h in now_held}.values()
        )
        index.set_leases(
            [h["id"] for h in now_held],
            [h for h in now_held if h["id"] in index.missing_leases([x["id"] for x in now_held])],
        )
        held = now_held
        assert_same_choice(index, rows, held, offline, cluster_id, request_set(rng))


def test_a_replacement_avoids_the_failed_machine_and_falls_back_on_it():
    rows = fleet(random.Random(7), 40)
    index = index_of(rows)
    request = placement.node_request("worker", 0, 1, None)
    best = placement.place(everything(rows, [], set(), "c"), [request])[0].machine_id
    candidates = index.candidates([request], set(), NOW, "c", frozenset({best}))
    assert best in {c.machine_id for c in candidates}
    assert placement.replacement(candidates, request, {best}).machine_id != best
    alone = [r for r in rows if r["id"] == best]
    index.load([dict(r) for r in alone], NOW)
    only = index.candidates([request], set(), NOW, "c", frozenset({best}))
    assert placement.replacement(only, request, {best}).machine_id == best


def test_a_changed_row_moves_in_the_orders():
    rows = fleet(random.Random(3), 20)
    index = index_of(rows)
    cheapest = dict(max(rows, key=lambda r: r["price_per_cpu_hour"]), price_per_cpu_hour=0.001)
    index.update([dict(cheapest)], NOW + 1)
    index.update([dict(cheapest)], NOW + 2)  # read again unchanged
    request = placement.node_request("worker", 0, 1, None)
    caps = index.candidates([request], set(), NOW + 2, "c")
    assert placement.place(caps, [request])[0].machine_id == cheapest["id"]
    assert len(index) == 20


def test_reliability_counts_the_time_since_the_row_was_read_as_online():
    row = {
        "id": "m",
        "registered_at": NOW - 7200,
        "online_seconds": 7200.0,
        "leases_completed": 0,
        "leases_lost": 0,
        "gpus": 0,
        "gpu_model": None,
        "cpus": 1,
        "price_per_gpu_hour": 0.0,
        "price_per_cpu_hour": 0.0,
        "provider": "p",
    }
    index = machine_index.MachineIndex()
    index.load([row], NOW)
    assert (
        index.reliability(row, NOW + 600)
        == reputation.score(online_seconds=7800, registered_at=NOW - 7200, now=NOW + 600, completed=0, lost=0)
        == 0.9
    )


def test_leases_are_read_once_and_forgotten_when_they_end():
    rows = [dict(r, gpus=2, gpu_model="H100", cpus=4) for r in fleet(random.Random(1), 1)]
    index = index_of(rows)
    a = {"id": "l-a", "machine_id": rows[0]["id"], "cluster_id": "c", "gpus": [0], "cpus": 1}
    assert index.missing_leases(["l-a"]) == ["l-a"]
    index.set_leases(["l-a"], [a])
    assert index.missing_leases(["l-a"]) == [] and index.lease_holdings() == [a]
    assert index.capacity(rows[0]["id"], NOW).free_gpus == [1]
    index.set_leases([], [])
    assert index.lease_holdings() == [] and index.capacity(rows[0]["id"], NOW).free_gpus == [0, 1]


def test_an_index_loaded_beside_knows_the_leases_of_the_one_it_replaces():
    rows = [dict(r, gpus=2, gpu_model="H100", cpus=4) for r in fleet(random.Random(2), 3)]
    old = index_of(rows, [{"id": "l-a", "machine_id": rows[0]["id"], "cluster_id": "c", "gpus": [1], "cpus": 2}])
    fresh = machine_index.MachineIndex().with_leases_of(old)
    fresh.load([dict(r) for r in rows], NOW)
    assert fresh.missing_leases(["l-a"]) == [] and fresh.capacity(rows[0]["id"], NOW).free_gpus == [0]
    assert fresh.capacity(rows[0]["id"], NOW).free_cpus == 2 and fresh.capacity(rows[1]["id"], NOW).free_cpus == 4
