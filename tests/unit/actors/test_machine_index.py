"""The machine index: placement among its candidates chooses what placement among every online machine
chooses, whatever the fleet, its leases and the request; changed rows move in the sorted orders."""

import random

import pytest

from actors import machine_index, placement, reputation

MODELS = ["H100", "A100", None]
NOW = 1_000_000.0


def fleet(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        gpus = rng.choice([0, 1, 2, 4, 8])
        rows.append({"id": f"m-{i:04d}", "provider": f"p{i % 3}", "gpu_model": rng.choice(MODELS[:2]) if gpus else None,
                     "gpus": gpus, "cpus": rng.choice([2, 8, 16, 64]),
                     "price_per_gpu_hour": rng.choice([0.5, 1.0, 1.5, 2.0]),  # ties on purpose
                     "price_per_cpu_hour": rng.choice([0.01, 0.02, 0.05]),
                     "registered_at": NOW - rng.choice([0, 600, 86_400]),
                     "online_seconds": rng.choice([0.0, 300.0, 80_000.0]),
                     "leases_completed": rng.randrange(5), "leases_lost": rng.randrange(3)})
    return rows


def leases(rng: random.Random, rows: list[dict], count: int, cluster_ids: list[str]) -> list[dict]:
    out = []
    for j in range(count):
        row = rng.choice(rows)
        used = rng.sample(range(row["gpus"]), rng.randint(0, row["gpus"]))
        out.append({"id": f"l-{j:04d}", "machine_id": row["id"], "cluster_id": rng.choice(cluster_ids),
                    "gpus": used, "cpus": rng.randint(1, 2)})
    return out


def request_set(rng: random.Random) -> list[placement.NodeRequest]:
    gpus = rng.choice([0, 1, 2, 4, 8])
    return placement.cluster_requests(
        rng.randint(1, 4), gpus, rng.choice([1, 2, 8]), rng.choice(MODELS) if gpus else None,
        max_price_per_gpu_hour=rng.choice([None, 1.0, 1.5]), max_price_per_cpu_hour=rng.choice([None, 0.02]),
        min_reliability=rng.choice([None, None, 0.8, 0.9]))


def everything(rows, holdings, offline, cluster_id):
    """What the manager's slow path gives placement: every online machine."""
    online = [dict(r, reliability=reputation.of_machine(r, NOW)) for r in rows if r["id"] not in offline]
    caps = placement.capacities(online, holdings)
    for cap in caps:
        cap.leases_of_cluster = sum(1 for h in holdings if h["machine_id"] == cap.machine_id
                                    and h["cluster_id"] == cluster_id)
    return caps


def outcome(machines, requests):
    try:
        return [(a.request, a.machine_id, a.gpu_indices) for a in placement.place(machines, requests)]
    except placement.InsufficientCapacity:
        return "short"


@pytest.mark.parametrize("seed", range(300))
def test_placement_among_the_candidates_is_placement_among_every_machine(seed):
    rng = random.Random(seed)
    rows = fleet(rng, rng.choice([5, 30, 120]))
    clusters = ["c-new", "c-a", "c-b"]
    held = leases(rng, rows, rng.randrange(0, len(rows)), clusters)
    offline = {r["id"] for r in rows if rng.random() < 0.15}
    index = machine_index.MachineIndex()
    index.load([dict(r) for r in rows], NOW)
    holdings = machine_index.LeaseHoldings()
    holdings.set([h["id"] for h in held], held)
    cluster_id = rng.choice(clusters)  # a new cluster, or one placing more nodes (spread counts)
    requests = request_set(rng)
    got = outcome(index.candidates(requests, holdings, offline, NOW, cluster_id), requests)
    want = outcome(everything(rows, held, offline, cluster_id), requests)
    if want == "short":
        assert got == "short"
    else:  # ties may break differently: the same requests placed, each machine ranked as well
        assert got != "short"
        ranks = {c.machine_id: c for c in everything(rows, held, offline, cluster_id)}
        assert sorted(_score(ranks, got)) == sorted(_score(ranks, want))


def _score(caps, assignments):
    """Each assignment as the rank its request gives its machine before any pick (ties compare equal)."""
    return [(repr(r), placement.rank(r)(caps[mid])) for r, mid, _ in assignments]


def test_a_replacement_avoids_the_failed_machine_and_falls_back_on_it():
    rows = fleet(random.Random(7), 40)
    index = machine_index.MachineIndex()
    index.load([dict(r) for r in rows], NOW)
    request = placement.node_request("worker", 0, 1, None)
    best = placement.place(everything(rows, [], set(), "c"), [request])[0].machine_id
    candidates = index.candidates([request], machine_index.LeaseHoldings(), set(), NOW, "c", frozenset({best}))
    assert best in {c.machine_id for c in candidates}
    assert placement.replacement(candidates, request, {best}).machine_id != best
    alone = [r for r in rows if r["id"] == best]
    index.load([dict(r) for r in alone], NOW)
    only = index.candidates([request], machine_index.LeaseHoldings(), set(), NOW, "c", frozenset({best}))
    assert placement.replacement(only, request, {best}).machine_id == best


def test_a_changed_row_moves_in_the_orders_and_counts_as_a_revision():
    rows = fleet(random.Random(3), 20)
    index = machine_index.MachineIndex()
    index.load([dict(r) for r in rows], NOW)
    cheapest = dict(max(rows, key=lambda r: r["price_per_cpu_hour"]), price_per_cpu_hour=0.001)
    revision = index.revision
    index.update([dict(cheapest)], NOW + 1)
    index.update([dict(cheapest)], NOW + 2)  # read again unchanged: no revision
    assert index.revision == revision + 1
    request = placement.node_request("worker", 0, 1, None)
    caps = index.candidates([request], machine_index.LeaseHoldings(), set(), NOW + 2, "c")
    assert placement.place(caps, [request])[0].machine_id == cheapest["id"]


def test_reliability_counts_the_time_since_the_row_was_read_as_online():
    row = {"id": "m", "registered_at": NOW - 7200, "online_seconds": 7200.0, "leases_completed": 0,
           "leases_lost": 0, "gpus": 0, "gpu_model": None, "cpus": 1, "price_per_gpu_hour": 0.0,
           "price_per_cpu_hour": 0.0, "provider": "p"}
    index = machine_index.MachineIndex()
    index.load([row], NOW)
    assert index.reliability(row, NOW + 600) == reputation.score(online_seconds=7800, registered_at=NOW - 7200,
                                                                 now=NOW + 600, completed=0, lost=0) == 0.9


def test_holdings_read_only_new_leases_and_forget_ended_ones():
    holdings = machine_index.LeaseHoldings()
    a = {"id": "l-a", "machine_id": "m1", "cluster_id": "c", "gpus": [0], "cpus": 1}
    b = {"id": "l-b", "machine_id": "m2", "cluster_id": "c", "gpus": [], "cpus": 1}
    assert holdings.missing(["l-a", "l-b"]) == ["l-a", "l-b"]
    holdings.set(["l-a", "l-b"], [a, b])
    version = holdings.version
    assert holdings.missing(["l-a", "l-b"]) == []
    holdings.set(["l-a", "l-b"], [])
    assert holdings.version == version
    holdings.set(["l-b"], [])
    assert holdings.rows == [b] and holdings.machines == {"m2"} and holdings.version == version + 1
