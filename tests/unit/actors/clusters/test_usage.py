from actors.clusters import usage
from tests import typed_rows


def lease(joined, left, gpus=(), cpus=1, gpu_price=2.0, cpu_price=0.36, cluster="c1", machine="m1"):
    return typed_rows.lease(
        joined_at=joined,
        left_at=left,
        gpus=list(gpus),
        cpus=cpus,
        cluster_id=cluster,
        machine_id=machine,
        price_per_gpu_hour=gpu_price,
        price_per_cpu_hour=cpu_price,
    )


def test_seconds_count_from_join_to_leave_clipped_to_the_window():
    assert usage.node_seconds(lease(100, 400), 0, 1000, 1000) == 300
    assert usage.node_seconds(lease(100, 400), 200, 300, 1000) == 100
    assert usage.node_seconds(lease(100, None), 0, 1000, 250) == 150  # still in Ray: up to now
    assert usage.node_seconds(lease(None, None), 0, 1000, 1000) == 0  # never joined: never billed


def test_gpu_leases_bill_gpu_hours_cpu_leases_cpu_hours():
    gpu = usage.lease_usage(lease(0, 3600, gpus=(0, 1), cpus=8), 0, 3600, 3600)
    assert gpu == {"node_seconds": 3600, "gpu_seconds": 7200, "cpu_seconds": 28800, "cost": 4.0}
    cpu = usage.lease_usage(lease(0, 1800, cpus=2), 0, 3600, 3600)
    assert cpu["cost"] == 0.36 and cpu["gpu_seconds"] == 0


def test_summary_groups_and_totals():
    got = usage.summarize(
        [lease(0, 10, cluster="a"), lease(0, 20, cluster="a"), lease(5, 10, cluster="b")],
        group_by="cluster_id",
        start=0,
        end=100,
        now=100,
    )
    assert got["total"]["node_seconds"] == 35
    assert [(i["cluster_id"], i["nodes"], i["node_seconds"]) for i in got["items"]] == [("a", 2, 30), ("b", 1, 5)]
