"""A machine's reliability: how much of its time on the platform it answered heartbeats, and how many
of the nodes it ran ended well rather than lost. Pure; the registry and placement read it."""

from __future__ import annotations

from typing import Any

# Priors, so that a new machine is neither perfect nor unusable: an hour of assumed uptime, and nine
# nodes completed for one lost (a new machine starts at 0.9 and moves with what it does).
UPTIME_PRIOR_S = 3600.0
PRIOR_COMPLETED, PRIOR_LOST = 9, 1


def score(*, online_seconds: float, registered_at: float, now: float, completed: int, lost: int) -> float:
    """In [0, 1]: uptime share times the share of nodes completed, each with its prior."""
    age = max(0.0, now - registered_at)
    uptime = min(1.0, (max(0.0, online_seconds) + UPTIME_PRIOR_S) / (age + UPTIME_PRIOR_S))
    ended_well = (completed + PRIOR_COMPLETED) / (completed + lost + PRIOR_COMPLETED + PRIOR_LOST)
    return round(uptime * ended_well, 3)


def of_machine(row: dict[str, Any], now: float) -> float:
    """The score of a machines row."""
    return score(
        online_seconds=row.get("online_seconds") or 0.0,
        registered_at=row["registered_at"],
        now=now,
        completed=row.get("leases_completed") or 0,
        lost=row.get("leases_lost") or 0,
    )
