"""Reading a request's headers straight from its ASGI scope, for the middleware that runs before FastAPI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def first(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    """The value of the first header called `name` (lower case, as ASGI gives names), None when absent."""
    for header, value in scope["headers"]:
        if header == name:
            return bytes(value)
    return None
