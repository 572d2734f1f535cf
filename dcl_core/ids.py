"""Every id of the platform: its pattern and how a new one is minted (and the random secrets minted beside them)."""

from __future__ import annotations

import secrets
import uuid

_HEX12 = "[0-9a-f]{12}"

CLUSTER_PREFIX, LEASE_PREFIX, MACHINE_PREFIX, WORK_ITEM_PREFIX, MACHINE_KEY_PREFIX = "c-", "l-", "m-", "w-", "mk-"
AGENT_KEY_ID_PREFIX = "k-"

CLUSTER_ID_PATTERN = rf"^c-{_HEX12}$"
LEASE_ID_PATTERN = rf"^l-{_HEX12}$"  # a lease is a node of a buyer's cluster: node ids are lease ids
MACHINE_ID_PATTERN = rf"^m-{_HEX12}$"
WORK_ITEM_ID_PATTERN = rf"^w-{_HEX12}$"
AGENT_KEY_ID_PATTERN = rf"^k-{_HEX12}$"  # names an agent key (the key itself is a secret: actors.access.agent_keys)
# The agent's own stable key of its machine (kept on disk); minted as "mk-<32 hex>", any of these accepted.
MACHINE_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"
# A Ray job's submission id (`ray job submit` mints raysubmit_<16 chars>; a buyer may choose one).
RAY_JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# A log file a lease shipped: Ray's session logs (ray/...) or the platform's commands' output (commands/...).
LEASE_LOG_NAME_PATTERN = r"^(ray|commands)/[A-Za-z0-9_.:=+-]{1,200}$"
USERNAME_PATTERN = r"^[a-z0-9_.-]{3,64}$"
MACHINE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
GPU_MODEL_PATTERN = r"^[A-Za-z0-9 _.()/+-]{1,64}$"
CONTAINER_IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:@-]*$"  # a docker image reference: name[:tag][@digest]


def _short(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12]


def new_cluster_id() -> str:
    return _short(CLUSTER_PREFIX)


def new_lease_id() -> str:
    return _short(LEASE_PREFIX)


def new_machine_id() -> str:
    return _short(MACHINE_PREFIX)


def new_work_item_id() -> str:
    return _short(WORK_ITEM_PREFIX)


def new_agent_key_id() -> str:
    return _short(AGENT_KEY_ID_PREFIX)


def new_machine_key() -> str:
    return MACHINE_KEY_PREFIX + uuid.uuid4().hex


def new_ray_auth_token() -> str:
    """A Ray auth token (a buyer sub-cluster's, or the platform cluster's own): 64 hex characters."""
    return secrets.token_hex(32)
