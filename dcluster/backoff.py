"""Backoff: the delays between tries while the platform is unreachable (the agent waits on it without end)."""

from __future__ import annotations

import random
from collections.abc import Callable

from dcl_core import protocol


class Backoff:
    """Exponential backoff, 1 s doubling to 30 s, with equal jitter (half fixed, half random)."""

    def __init__(
        self, base_s: float = 1.0, cap_s: float = protocol.AGENT_MAX_RETRY_S, rand: Callable[[], float] = random.random
    ):
        self.base_s, self.cap_s, self._rand = base_s, cap_s, rand
        self.attempts = 0

    def next(self) -> float:
        delay: float = min(self.cap_s, self.base_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return delay * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self.attempts = 0
