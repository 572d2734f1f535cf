"""A buyer cluster's events: what happened to it, in order, as its buyer reads them (GET .../events)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from actors.db import cluster_store as cstore
from dcl_core import domain

logger = logging.getLogger(__name__)


class ClusterEvents:
    def __init__(self, store: cstore.ClusterStore, clock: Callable[[], float]):
        self._store = store
        self._clock = clock

    async def record(self, cluster_id: str, kind: domain.EventKind, message: str) -> None:
        logger.info("cluster %s: %s", cluster_id, message)
        await self._store.add_event(cluster_id, kind, message, self._clock())
