"""Installs are reproducible: constraints.txt pins every dependency, and this environment has exactly those versions."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
PROJECT = "decentralized-clusters"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str, extras: set[str]) -> list[Requirement]:
    """What dist with these extras requires; the project's extras that name other extras of it
    (`decentralized-clusters[agent]`) are followed, not listed."""
    out, seen, todo = [], set(), [(dist, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                if _canonical(req.name) == _canonical(name):
                    todo.append((name, frozenset(req.extras)))
                else:
                    out.append(req)
    return out


def test_every_dependency_of_the_project_and_its_test_extra_is_pinned():
    pins = locked()
    seen, todo = set(), [(PROJECT, {"test"})]
    while todo:
        dist, extras = todo.pop()
        for req in _requirements(dist, extras):
            name = _canonical(req.name)
            assert name in pins, f"{name} (needed by {dist}) is missing from constraints.txt: run `make lock`"
            if (name, frozenset(req.extras)) not in seen:
                seen.add((name, frozenset(req.extras)))
                todo.append((req.name, set(req.extras)))
    assert {"ray", "pytest"} <= {name for name, _ in seen}  # the walk reached the requirements (not a vacuous pass)


def test_the_installed_versions_are_the_locked_ones():
    drift = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin (e.g. a wheel for another OS) need not be here
        if installed != version:
            drift[name] = f"installed {installed}, locked {version}"
    assert not drift, f"this environment drifted from constraints.txt (reinstall with `make venv`): {drift}"


def test_pyproject_ranges_admit_the_locked_versions():
    pins = locked()
    checked = []
    for req in _requirements(PROJECT, {"test"}):
        version = pins[_canonical(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}{req.specifier} excludes locked {version}"
        checked.append(_canonical(req.name))
    assert {"ray", "pytest"} <= set(checked)  # pyproject's ranges were read (not a vacuous pass)
