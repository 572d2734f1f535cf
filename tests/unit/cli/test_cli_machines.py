"""`dcluster offers` and `dcluster machine list`: GPUs shown as declared or verified, mismatches with what differs."""

import json

import httpx

from cli import machines
from tests.unit.cli.test_cli_buyer import fake, login, run  # noqa: F401 (the fixture and helpers)

MACHINE = {
    "id": "m-0123456789ab",
    "name": "box",
    "status": "online",
    "reliability": 0.9,
    "last_heartbeat": None,
    "spec": {"cpus": 8, "gpus": [{"index": 0, "model": "NVIDIA H200", "memory_mb": 143771}]},
    "gpu_verification": {"status": "mismatch", "differences": ["GPU 0 model: claimed 'NVIDIA H200', seen 'NVIDIA L4'"]},
}
OFFER = {
    "gpu_model": "NVIDIA H100",
    "machines": 3,
    "gpus": 24,
    "cpus": 96,
    "memory_mb": 1,
    "sandboxed": True,
    "price_per_gpu_hour_min": 1.5,
    "price_per_gpu_hour_max": 2.0,
    "price_per_cpu_hour_min": 0.01,
    "price_per_cpu_hour_max": 0.01,
    "reliability_min": 0.9,
    "reliability_max": 0.99,
    "verified_gpus": 16,
    "gpu_verification": {"verified": 2, "declared": 1},
    "ray_version": "2.60.0",
    "python_version": "3.11",
    "launchable": True,
}


def test_machine_rows_show_the_gpu_check_and_what_differs():
    headers, rows = machines.machine_rows(
        [MACHINE, {**MACHINE, "spec": {"cpus": 2, "gpus": []}, "gpu_verification": {"status": "no_gpus"}}]
    )
    assert "GPU check" in headers
    check = headers.index("GPU check")
    assert rows[0][check] == "mismatch: GPU 0 model: claimed 'NVIDIA H200', seen 'NVIDIA L4'"
    assert rows[1][check] == "no_gpus" and rows[1][headers.index("GPUs")] == "-"


def test_offer_rows_count_verified_gpus_and_machines_by_status():
    headers, rows = machines.offer_rows([OFFER])
    assert rows[0][headers.index("verified GPUs (machines)")] == "16 (1 declared, 2 verified)"
    assert rows[0][headers.index("$/GPU-h")] == "1.50-2.00"
    assert rows[0][headers.index("Ray / Python")] == "2.60.0 / 3.11"
    _, other = machines.offer_rows([{**OFFER, "ray_version": "2.9.3", "launchable": False}])
    assert other[0][headers.index("Ray / Python")] == "2.9.3 / 3.11 (not launched here)"


def test_offers_and_machine_list_commands(fake, capsys, tmp_path, monkeypatch):
    handle = fake.handle

    def with_machines(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/offers":
            return httpx.Response(200, json=[OFFER])
        if request.url.path == "/v1/machines":
            return httpx.Response(200, json=[MACHINE])
        return handle(request)

    monkeypatch.setattr(fake, "handle", with_machines)
    login(capsys, tmp_path)
    code, out, _ = run(capsys, "offers")
    assert code == 0 and "NVIDIA H100" in out and "16 (1 declared, 2 verified)" in out
    code, out, _ = run(capsys, "machine", "list")
    assert code == 0 and "mismatch: GPU 0 model" in out
    code, out, _ = run(capsys, "machine", "list", "--json")
    assert code == 0 and json.loads(out)[0]["gpu_verification"]["status"] == "mismatch"
