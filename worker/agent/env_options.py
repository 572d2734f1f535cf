"""The agent's options taken from DCLUSTER_* environment variables (a service's environment file, a container)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

ENV_PREFIX = "DCLUSTER_"


def env_name(option: str) -> str:
    """--price-per-gpu-hour → DCLUSTER_PRICE_PER_GPU_HOUR."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def defaults_from_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Each long option's default from DCLUSTER_<OPTION> where set (a flag on the command line still wins);
    a switch is on for 1/true/yes/on. A value that does not parse is the parser's usual error, naming the
    variable."""
    for action in parser._actions:  # argparse offers no public list of its options
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.dest in ("help", "version"):
            continue
        raw = environ.get(env_name(long[0]))
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            value: object = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError):
                parser.error(f"{env_name(long[0])}={raw!r}: not a valid {long[0]}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"{env_name(long[0])}={raw!r}: {long[0]} is one of {', '.join(map(str, action.choices))}")
        parser.set_defaults(**{action.dest: value})
