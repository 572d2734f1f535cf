"""`dcluster usage`: what the signed-in account used (buyer) or supplied and earned (provider)."""

from __future__ import annotations

import argparse
import time

from cli import durations, exits, output, session, terminal
from dcl_core import domain


def usage_rows(report: dict) -> tuple[list[str], list[list]]:
    """Headers, and one row per cluster (buyers) or machine (providers), then the total."""
    provider = report.get("role") == domain.Role.PROVIDER
    key, money = ("machine_id", "earnings") if provider else ("cluster_id", "cost")
    rows = [
        [
            item[key],
            item["nodes"],
            f"{item['node_seconds']:.0f}",
            f"{item['gpu_seconds']:.0f}",
            f"{item['cpu_seconds']:.0f}",
            f"{item[money]:.4f}",
        ]
        for item in report.get("items", [])
    ]
    total = report.get("total", {})
    rows.append(
        [
            "total",
            "",
            f"{total.get('node_seconds', 0):.0f}",
            f"{total.get('gpu_seconds', 0):.0f}",
            f"{total.get('cpu_seconds', 0):.0f}",
            f"{total.get(money, 0):.4f}",
        ]
    )
    return [key.split("_")[0], "nodes", "node-s", "GPU-s", "CPU-s", money], rows


@exits.guarded()
def cmd_usage(args: argparse.Namespace) -> int:
    end = time.time()
    params = {"start": end - args.since, "end": end}
    with session.signed_in_client() as client:
        report = client.request("GET", "/v1/usage", params=params)
    if args.json:
        output.print_json(report)
    else:
        terminal.print_table(*usage_rows(report))
    return exits.Exit.OK


def add_usage(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "usage",
        help="GPU/CPU-seconds and cost (buyers) or supplied seconds and earnings "
        "(providers), counted from each node joining Ray to leaving it",
    )
    p.add_argument(
        "--since",
        type=durations.duration_arg,
        default=30 * 86_400,
        metavar="DURATION",
        help="how far back, e.g. 24h or 30d... (default 30 days)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p
