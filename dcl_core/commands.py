"""What launcher commands mean to us: `ray start` (a node joins), `ray stop` (intercepted), and redaction of
secrets in their text."""

from __future__ import annotations

import re

RAY_START_RE = re.compile(r"\bray\s+start\b")
RAY_STOP_RE = re.compile(r"\bray\s+stop\b")

REDACTED = "***"
SECRET_ENV_PREFIX = "RAY_AUTH_TOKEN"  # RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH: never logged, never echoed
# An assignment of a secret variable, its value quoted or not: RAY_AUTH_TOKEN="..." / '...' / bare.
_SECRET_ASSIGNMENT = re.compile(r"(RAY_AUTH_TOKEN\w*=)(\"[^\"]*\"|'[^']*'|\S+)")


def starts_ray(cmd: str) -> bool:
    return bool(RAY_START_RE.search(cmd or ""))


def stops_ray(cmd: str) -> bool:
    return bool(RAY_STOP_RE.search(cmd or ""))


def redact(text: str) -> str:
    """text with the value of every RAY_AUTH_TOKEN*=... assignment replaced by ***."""
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
