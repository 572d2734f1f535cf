"""The distribution's extras (pyproject.toml: agent, platform, aws): which of an extra's packages this install
lacks, and the pip command that adds them. Read from the installed metadata, so pyproject stays the one list."""

from __future__ import annotations

import importlib.metadata
import re

DISTRIBUTION = "decentralized-clusters"

# `name[extra,...] specifier; marker`, as the wheel's METADATA writes each Requires-Dist.
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[(?P<extras>[^\]]*)\])?[^;]*(;(?P<marker>.*))?$"
)
_ONLY_EXTRA = re.compile(r"""^\s*extra\s*==\s*["'](?P<extra>[^"']+)["']\s*$""")


def install_command(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing(extra: str) -> list[str]:
    """The distributions the extra names (through the other extras of ours it names) that are not installed.

    Empty where this distribution itself is not installed (run from a source tree: nothing to compare
    with). A requirement whose marker says more than its extra (a platform's, a Python version's) is
    optional somewhere, so it is never reported missing. What those distributions need in turn is
    pip's to check (`pip check`)."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    absent: list[str] = []
    seen: set[str] = set()
    todo = [extra]
    while todo:
        wanted = todo.pop()
        if wanted in seen:
            continue
        seen.add(wanted)
        for name, extras in named_by(requirements, wanted):
            if canonical_name(name) == canonical_name(DISTRIBUTION):
                todo.extend(extras)
            elif not is_installed(name) and name not in absent:
                absent.append(name)
    return absent


def named_by(requirements: list[str], extra: str) -> list[tuple[str, list[str]]]:
    out = []
    for text in requirements:
        match = _REQUIREMENT.match(text)
        only = _ONLY_EXTRA.match(match["marker"] or "") if match else None
        if match and only and only["extra"] == extra:
            out.append((match["name"], [e.strip() for e in (match["extras"] or "").split(",") if e.strip()]))
    return out


def is_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
