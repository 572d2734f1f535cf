"""What `--version` says: this package's version, and the Ray and Python it runs with."""

from __future__ import annotations

import importlib.metadata
import platform

DISTRIBUTION = "decentralized-clusters"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(program: str) -> str:
    return f"{program} {version_of(DISTRIBUTION)} (ray {version_of('ray')}, python {platform.python_version()})"
