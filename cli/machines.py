"""`dcluster offers` (everyone) and `dcluster machine list` (providers, admins): capacity and machines, with
each machine's reliability and whether its GPUs are declared or verified."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cli import exits, output, session, terminal


def _gpus(machine: dict) -> str:
    gpus = machine["spec"].get("gpus") or []
    return f"{len(gpus)} x {gpus[0]['model']}" if gpus else "-"


def _verification(machine: dict) -> str:
    """The status, and for a mismatch what differs (a table cell)."""
    verification = machine.get("gpu_verification") or {}
    status = verification.get("status", "-")
    differences = verification.get("differences") or []
    return f"{status}: {'; '.join(differences)}" if differences else status


def machine_rows(machines: list[dict]) -> tuple[list[str], list[list]]:
    rows = [
        [
            m["id"],
            m["name"],
            m["status"],
            _gpus(m),
            _verification(m),
            m["spec"]["cpus"],
            f"{m['reliability']:.2f}",
            output.clock_time(m["last_heartbeat"]),
        ]
        for m in machines
    ]
    return ["machine", "name", "status", "GPUs", "GPU check", "CPUs", "reliability", "last heartbeat"], rows


def _range(low: float, high: float, fmt: str) -> str:
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def offer_rows(offers: list[dict]) -> tuple[list[str], list[list]]:
    rows = []
    for o in offers:
        by_status = ", ".join(f"{n} {status}" for status, n in sorted(o.get("gpu_verification", {}).items()))
        rows.append(
            [
                o["gpu_model"] or "CPU only",
                o["machines"],
                o["gpus"],
                f"{o['verified_gpus']} ({by_status})" if o["gpu_model"] else "-",
                o["cpus"],
                _range(o["price_per_gpu_hour_min"], o["price_per_gpu_hour_max"], "{:.2f}") if o["gpu_model"] else "-",
                _range(o["price_per_cpu_hour_min"], o["price_per_cpu_hour_max"], "{:.3f}"),
                _range(o["reliability_min"], o["reliability_max"], "{:.2f}"),
                "yes" if o["sandboxed"] else "NO",
                f"{o.get('ray_version') or '?'} / {o.get('python_version') or '?'}"
                + ("" if o.get("launchable", True) else " (not launched here)"),
            ]
        )
    return [
        "GPU model",
        "machines",
        "GPUs",
        "verified GPUs (machines)",
        "CPUs",
        "$/GPU-h",
        "$/CPU-h",
        "reliability",
        "sandboxed",
        "Ray / Python",
    ], rows


def show(args: argparse.Namespace, path: str, rows: Callable[[list[dict]], tuple[list[str], list[list]]]) -> int:
    """GET a list and print it: JSON with --json, else a table."""
    with session.signed_in_client() as client:
        items = client.request("GET", path)
    if args.json:
        output.print_json(items)
    else:
        terminal.print_table(*rows(items))
    return exits.Exit.OK


@exits.guarded()
def cmd_offers(args: argparse.Namespace) -> int:
    return show(args, "/v1/offers", offer_rows)


def list_machines(args: argparse.Namespace) -> int:
    return show(args, "/v1/machines", machine_rows)


def add_offers(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("offers", help="online capacity by GPU model and Ray/Python: prices, reliability, verified GPUs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p
