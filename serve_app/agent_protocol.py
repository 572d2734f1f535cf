"""The agents' protocol version on the machine routes: a call announcing another one gets 426 naming both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Depends, Request

from dcl_core import errors, protocol
from serve_app import asgi_headers
from serve_app import errors as http_errors

_HEADER_NAME = protocol.PROTOCOL_HEADER.lower().encode()  # as ASGI names it


def header(scope: Mapping[str, Any]) -> str | None:
    """The PROTOCOL_HEADER value of an ASGI scope (the first one), None when absent."""
    value = asgi_headers.first(scope, _HEADER_NAME)
    return value.decode("latin-1") if value is not None else None


async def check(request: Request) -> None:
    refusal = protocol.protocol_refusal(header(request.scope))
    if refusal is not None:
        raise errors.UpgradeRequired(refusal)


# Spread into the decorator of every route an agent calls: the check, and its answer in the schema.
AGENT_ROUTE: dict[str, Any] = {"dependencies": [Depends(check)], "responses": http_errors.documented(426)}
