import json

from actors.machines import offers


def row(model, gpus, price, cpus=8):
    return {
        "gpu_model": model,
        "gpus": gpus,
        "cpus": cpus,
        "memory_mb": 1000,
        "price_per_gpu_hour": price,
        "price_per_cpu_hour": 0.01,
    }


def test_offers_group_by_model_with_price_range_cpu_only_last():
    got = offers.group_offers([row("T4", 1, 0.5), row("T4", 2, 0.3), row(None, 0, 0), row("H100", 8, 2.0)])
    assert [g["gpu_model"] for g in got] == ["H100", "T4", None]
    t4 = got[1]
    assert (t4["machines"], t4["gpus"], t4["price_per_gpu_hour_min"], t4["price_per_gpu_hour_max"]) == (2, 3, 0.3, 0.5)
    assert got[2]["machines"] == 1 and got[2]["gpus"] == 0


def test_unsandboxed_machines_are_offered_apart_and_say_so():
    safe, unsafe = row("T4", 1, 0.5), row("T4", 1, 0.4)
    safe["spec"] = json.dumps({"sandbox": "bwrap"})
    unsafe["spec"] = {"sandbox": "none"}
    got = offers.group_offers([unsafe, safe])
    assert [(g["gpu_model"], g["sandboxed"], g["machines"]) for g in got] == [("T4", True, 1), ("T4", False, 1)]
    assert offers.group_offers([row("T4", 1, 0.5)])[0]["sandboxed"] is False  # an agent that does not say
