"""Printing for the buyer commands: aligned tables, clusters, JSON on stdout, progress on stderr, shell exports."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from dcl_core import domain


def print_json(data: Any, *, stream: TextIO | None = None, compact: bool = False) -> None:
    """JSON on stdout (the only thing a --json command writes there)."""
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2, default=str)
    print(text, file=stream or sys.stdout, flush=True)


def show(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """A command's answer: JSON with --json, else the human form render(data)."""
    if as_json:
        print_json(data)
    else:
        print(render(data))


def progress(message: str) -> None:
    """A line for the human watching: stderr, so that stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain text columns, left-aligned, two spaces apart; no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells)


def human_duration(seconds: float) -> str:
    """3725 -> '1h02m', 95 -> '1m35s', 5 -> '5s', 2 days -> '2d00h'; negative -> '0s'."""
    s = max(0, int(round(seconds)))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def clock_time(ts: float | None) -> str:
    """A timestamp as local 'YYYY-mm-dd HH:MM:SS' ('-' when unset)."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def export_lines(env: Mapping[str, str]) -> list[str]:
    """`export K=V` lines, every value shell-quoted: `eval "$(...)"` sets exactly these variables."""
    lines = []
    for key, value in env.items():
        if not key.isidentifier():  # never print something the shell would run instead of assign
            raise ValueError(f"not a shell variable name: {key!r}")
        lines.append(f"export {key}={shlex.quote(str(value))}")
    return lines


def event_line(event: Mapping[str, Any]) -> str:
    return f"{clock_time(event.get('ts'))}  {event.get('kind', ''):<14} {event.get('message', '')}"


def detail_text(detail: Any, field_names: Mapping[str, str] | None = None) -> str:
    """The platform's error detail as one line (FastAPI's 422 list becomes 'field: message; ...')."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(x) for x in item.get("loc", []) if x not in ("body", "path", "query")]
            name = ".".join((field_names or {}).get(x, x) for x in loc)
            parts.append(f"{name}: {item.get('msg')}" if name else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail)


# --- clusters ---------------------------------------------------------------------------


def _cluster_status(value: Any) -> domain.ClusterStatus | None:
    try:
        return domain.ClusterStatus(value)
    except ValueError:  # a status this CLI does not know yet (a newer platform)
        return None


def is_active(status: Any) -> bool:
    """Holds or is acquiring machines (pending, provisioning, running, degraded)."""
    s = _cluster_status(status)
    return bool(s and s.is_active())


def is_terminal(status: Any) -> bool:
    s = _cluster_status(status)
    return bool(s and s.is_terminal())


def _gpus(c: Mapping) -> str:
    total = int(c.get("num_workers", 0)) * int(c.get("gpus_per_worker", 0))
    return f"{total} {c['gpu_model']}" if total and c.get("gpu_model") else str(total)


def _expires_in(c: Mapping, now: float) -> str:
    return human_duration(c["expires_at"] - now) if is_active(c.get("status")) else "-"


CLUSTER_HEADERS = ("ID", "NAME", "STATUS", "WORKERS", "GPUS", "EXPIRES IN")


def cluster_rows(clusters: list[dict], now: float) -> list[tuple]:
    return [
        (
            c["id"],
            c.get("name") or "",
            c["status"],
            f"{c.get('workers_joined', 0)}/{c['num_workers']}",
            _gpus(c),
            _expires_in(c, now),
        )
        for c in clusters
    ]


def cluster_summary(c: Mapping, now: float) -> str:
    """One line: 'cluster c-... (name) is running: 2/2 workers, ...; expires in 29m58s'."""
    per_worker = (
        f"{c['gpus_per_worker']} GPU"
        + (f" {c['gpu_model']}" if c.get("gpu_model") else "")
        + f", {c['cpus_per_worker']} CPU each"
    )
    line = (
        f"cluster {c['id']} ({c.get('name')}) is {c['status']}: "
        f"{c.get('workers_joined', 0)}/{c['num_workers']} workers joined ({per_worker})"
    )
    if is_active(c["status"]):
        line += f"; expires in {_expires_in(c, now)}"
    if c.get("reason"):
        line += f"; reason: {c['reason']}"
    return line


def cluster_details(c: Mapping, now: float) -> str:
    lines = [
        cluster_summary(c, now),
        f"  backend:  {c.get('backend')}",
        f"  created:  {clock_time(c.get('created_at'))}",
        f"  running:  {clock_time(c.get('running_at'))}",
        f"  expires:  {clock_time(c.get('expires_at'))}",
        f"  ended:    {clock_time(c.get('ended_at'))}",
        f"  head IP:  {c.get('head_node_ip') or '-'}",
        f"  runs:     Ray {c.get('ray_version') or '-'} on Python {c.get('python_version') or '-'}",
    ]
    nodes = c.get("nodes") or []
    if nodes:
        rows = [
            (
                n["id"],
                n["role"],
                n["status"],
                n["machine_id"],
                n.get("node_ip") or "-",
                n["gpus"],
                n["cpus"],
                "yes" if n.get("joined") else "no",
            )
            for n in nodes
        ]
        nodes_table = table(("NODE", "ROLE", "STATUS", "MACHINE", "IP", "GPUS", "CPUS", "JOINED"), rows)
        lines += ["  nodes:"] + ["    " + row for row in nodes_table.splitlines()]
    return "\n".join(lines)
