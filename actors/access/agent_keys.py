"""Per-machine agent keys: the credential an agent uses once its provider's password has enrolled it
(not to be confused with the `machine_key`, the agent's own stable name for its machine).

A key reads `dcm.<machine id>.<secret>`: the machine id says which machine it speaks for, and the
platform keeps only a SHA-256 of the secret (the secret has 256 bits, so a slow hash adds nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

from dcl_core import ids

PREFIX = "dcm."
KEY_ID_PATTERN = ids.AGENT_KEY_ID_PATTERN
_KEY_RE = re.compile(r"^dcm\.(" + ids.MACHINE_ID_PATTERN.strip("^$") + r")\.([A-Za-z0-9_-]{43})$")


@dataclasses.dataclass(frozen=True)
class MachineKey:
    """A caller proven by nothing yet: the registry checks the secret against the machine's active key."""

    machine_id: str
    secret: str = dataclasses.field(repr=False)


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX)


def parse(token: str) -> MachineKey | None:
    """The key in a bearer token, or None when it is not a well-formed machine key."""
    match = _KEY_RE.match(token)
    return MachineKey(match.group(1), match.group(2)) if match else None


def mint(machine_id: str) -> tuple[str, str, str]:
    """A new key for the machine: (key id, the key to hand to the agent once, the hash to store)."""
    secret = secrets.token_urlsafe(32)
    return ids.new_agent_key_id(), f"{PREFIX}{machine_id}.{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(key: MachineKey, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(key.secret), key_hash)
