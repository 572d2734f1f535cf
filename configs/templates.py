"""The sub-cluster launcher templates (the YAML files in this package), read once each."""

from __future__ import annotations

import copy
import functools
import importlib.resources
from typing import Any

import yaml


@functools.cache
def _read(name: str) -> dict[str, Any]:
    text = importlib.resources.files("configs").joinpath(name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def load(name: str) -> dict[str, Any]:
    """A copy of template `name` (e.g. "market.yaml") for the caller to fill in: the cached one never changes."""
    return copy.deepcopy(_read(name))
