"""Usage over time: time buckets for the usage calls, and an inline SVG bar chart (pure functions)."""

from __future__ import annotations

import dataclasses
import math
import time
from html import escape

# window name → (bucket length in seconds, number of buckets, label format)
WINDOWS = {"24h": (3600, 24, "%H:%M"), "7d": (86_400, 7, "%a %d"), "30d": (86_400, 30, "%d %b")}
DEFAULT_WINDOW = "24h"


@dataclasses.dataclass(frozen=True)
class Bucket:
    start: float
    end: float
    label: str


def buckets(window: str, now: float) -> list[Bucket]:
    """Equal buckets ending at the current (partial) one, aligned to whole hours or days (UTC)."""
    step, count, fmt = WINDOWS[window]
    last_start = math.floor(now / step) * step
    first = last_start - (count - 1) * step
    return [
        Bucket(s, min(s + step, now), time.strftime(fmt, time.gmtime(s)))
        for s in (first + i * step for i in range(count))
    ]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is >= value (an axis top that reads well)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        top = m * 10.0**exponent
        if top >= value * (1 - 1e-9):
            return top
    return 10.0 ** (exponent + 1)


def bar_chart(
    labels: list[str], values: list[float], *, title: str, unit: str = "$", width: int = 720, height: int = 220
) -> str:
    """An SVG bar chart: one bar per value, a labelled y axis at 0, half and top, every few x labels."""
    left, right, top, bottom = 56, 12, 28, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = _nice_ceiling(max(values, default=0.0))
    n = max(len(values), 1)
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.7)
    every = max(1, math.ceil(n / 8))  # at most ~8 x labels
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{left}" y="16">{escape(title)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_amount(ymax * frac, unit))}</text>"
        )
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * (value / ymax) if ymax else 0.0
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}"><title>{escape(label)}: {escape(_amount(value, unit))}</title></rect>'
        )
        if i % every == 0:
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 10}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _amount(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"
    return f"{value:,.2f} {unit}"
