"""Durations as people type them: '30m', '2h', '1h30m', '90s' or plain seconds."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_S = (86400, 3600, 60, 1)


def parse_duration(text: str) -> int:
    """'30m' → 1800, '2h' → 7200, '1h30m' → 5400, '90s' → 90, '3600' → 3600 (plain numbers are seconds)."""
    value = str(text).strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _DURATION.fullmatch(value)
        if not value or not match or not any(match.groups()):
            raise ValueError(f"invalid duration {text!r}: use seconds (3600) or d/h/m/s units (30m, 2h, 1h30m, 90s)")
        seconds = sum(int(g) * unit for g, unit in zip(match.groups(), _UNIT_S, strict=True) if g)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than 0 s")
    return seconds


def duration_arg(text: str) -> int:
    """parse_duration as an argparse type."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
