"""Printing for the buyer commands: aligned tables, JSON on stdout, progress on stderr, shell exports."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def print_json(data: Any, *, stream: TextIO | None = None, compact: bool = False) -> None:
    """JSON on stdout (the only thing a --json command writes there)."""
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2, default=str)
    print(text, file=stream or sys.stdout, flush=True)


def progress(message: str) -> None:
    """A line for the human watching: stderr, so that stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain text columns, left-aligned, two spaces apart; no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


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
