"""Reporting the platform's outages as the agent sees them: once when they begin, once a minute, once when they end."""

from __future__ import annotations

import logging
from collections.abc import Callable

import dcluster

logger = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


class OutageLog:
    """Logs a failing stage once, then once a minute while it lasts (agents run for days)."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._since: float | None = None
        self._logged_at = 0.0
        self.was_unreachable = False  # the latest failure was the platform's absence, not its answer

    def failed(self, stage: str, exc: Exception) -> None:
        self.was_unreachable = isinstance(exc, dcluster.PlatformUnreachable) or getattr(exc, "is_transient", False)
        now = self._clock()
        if self._since is None:
            self._since = self._logged_at = now
            logger.warning("%s failed: %s; retrying with backoff", stage, exc)
        elif now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            logger.warning("%s still failing after %.0f s: %s", stage, now - self._since, exc)
        else:
            logger.debug("%s failed: %s", stage, exc)

    def recovered(self) -> bool:
        """Ends the outage, if there was one; True when it did."""
        if self._since is None:
            return False
        logger.info("platform reachable again after %.0f s", self._clock() - self._since)
        self._since = None
        return True
