import json

from actors.machines import offers

RAY = "2.60.0"


def row(model, gpus, price, cpus=8, ray=RAY, python="3.11"):
    return {
        "ray_version": ray,
        "python_version": python,
        "gpu_model": model,
        "gpus": gpus,
        "cpus": cpus,
        "memory_mb": 1000,
        "price_per_gpu_hour": price,
        "price_per_cpu_hour": 0.01,
    }


def test_offers_group_by_model_with_price_range_cpu_only_last():
    got = offers.group_offers([row("T4", 1, 0.5), row("T4", 2, 0.3), row(None, 0, 0), row("H100", 8, 2.0)], (RAY,))
    assert [g["gpu_model"] for g in got] == ["H100", "T4", None]
    t4 = got[1]
    assert (t4["machines"], t4["gpus"], t4["price_per_gpu_hour_min"], t4["price_per_gpu_hour_max"]) == (2, 3, 0.3, 0.5)
    assert got[2]["machines"] == 1 and got[2]["gpus"] == 0


def test_unsandboxed_machines_are_offered_apart_and_say_so():
    safe, unsafe = row("T4", 1, 0.5), row("T4", 1, 0.4)
    safe["spec"] = json.dumps({"sandbox": "bwrap"})
    unsafe["spec"] = {"sandbox": "none"}
    got = offers.group_offers([unsafe, safe], (RAY,))
    assert [(g["gpu_model"], g["sandboxed"], g["machines"]) for g in got] == [("T4", True, 1), ("T4", False, 1)]
    assert offers.group_offers([row("T4", 1, 0.5)], (RAY,))[0]["sandboxed"] is False  # an agent that does not say


def test_offers_group_by_ray_version_and_python_minor_and_say_which_can_be_launched():
    machines = [
        row("T4", 1, 0.5),
        row("T4", 1, 0.5, python="3.12"),
        row("T4", 2, 0.5, python="3.12"),
        row("T4", 4, 0.5, ray="2.59.0"),
    ]
    got = offers.group_offers(machines, (RAY,))
    assert [(g["ray_version"], g["python_version"], g["launchable"], g["gpus"]) for g in got] == [
        (RAY, "3.12", True, 3),
        (RAY, "3.11", True, 1),
        ("2.59.0", "3.11", False, 4),
    ]
