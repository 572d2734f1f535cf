"""The agent's options from a TOML file (`--config PATH`, else /etc/dcluster/agent.toml when present).

Precedence, highest first: a flag on the command line, DCLUSTER_<OPTION> in the environment, the config
file, the option's default. Keys are the long options without their dashes, `-` or `_` alike
(`platform_url = "https://..."`, `price-per-gpu-hour = 0.8`); a switch takes `true`/`false`.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/dcluster/agent.toml")
OPTION = "--config"
# Not settable from the file: what picks the file, and what only makes sense for one invocation.
NOT_FROM_FILE = frozenset({"help", "version", "config", "detect_only", "enroll"})


class ConfigError(Exception):
    """The config file cannot be used: the message names the file and, where it is one key, that key."""


def key_of(action: argparse.Action) -> str | None:
    """--price-per-gpu-hour → price_per_gpu_hour; None for what the file cannot set."""
    long = [o for o in action.option_strings if o.startswith("--")]
    if not long or action.dest in NOT_FROM_FILE:
        return None
    return long[0][2:].replace("-", "_")


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key the file may hold, with its option."""
    keys = {}
    for action in parser._actions:  # argparse offers no public list of its options
        key = key_of(action)
        if key is not None:
            keys[key] = action
    return keys


def read(path: Path) -> dict[str, Any]:
    """The file's table; refuses a file others may write (root reads it: it could pick `--runtime none`)."""
    try:
        info = path.stat()
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc}") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"config file {path}: writable by other users; chmod go-w {path}")
    if os.geteuid() == 0 and info.st_uid != 0:
        raise ConfigError(f"config file {path}: the agent runs as root but the file belongs to uid {info.st_uid}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


def defaults_from_file(parser: argparse.ArgumentParser, path: Path, table: Mapping[str, Any]) -> None:
    """Set the parser's defaults from the file's keys; ConfigError names the first unknown key or bad value."""
    keys = settable(parser)
    values = {}
    for raw_key, raw in table.items():
        key = raw_key.replace("-", "_")
        action = keys.get(key)
        if action is None:
            raise ConfigError(
                f"config file {path}: unknown key {raw_key!r}; "
                f"the keys are the agent's options: {', '.join(sorted(keys))}"
            )
        values[action.dest] = _value(path, raw_key, action, raw)
    parser.set_defaults(**values)


def _value(path: Path, key: str, action: argparse.Action, raw: Any) -> Any:
    where = f"config file {path}: {key} = {raw!r}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: a switch takes true or false")
        return raw
    kind = action.type if callable(action.type) else str
    # TOML types the value: a price in quotes or a count with decimals is a mistake to name, not to guess.
    fits = {
        int: isinstance(raw, int) and not isinstance(raw, bool),
        float: isinstance(raw, (int, float)) and not isinstance(raw, bool),
    }.get(kind, isinstance(raw, str))
    if not fits:
        raise ConfigError(f"{where}: expected a {_kind(kind)}")
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not a valid {_kind(kind)}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: one of {', '.join(map(str, action.choices))}")
    return value


def _kind(kind: Any) -> str:
    return {int: "whole number", float: "number (no quotes)", Path: "path (a string)"}.get(kind, "string")


def pick_path(argv: Iterable[str], environ: Mapping[str, str], env_name: str) -> Path | None:
    """The config file to read: --config, else $DCLUSTER_CONFIG, else DEFAULT_PATH when it exists (a
    default that is absent is no error; one asked for is)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(OPTION, type=Path, default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.config is not None:
        return Path(known.config)
    if environ.get(env_name):
        return Path(environ[env_name])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def render(values: Mapping[str, Any]) -> str:
    """TOML for these keys (str, int, float, bool, Path): what install-service writes."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
        lines.append(f"{key} = {text}")
    rendered = "\n".join(lines) + "\n"
    if tomllib.loads(rendered) != {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}:
        raise ValueError("a value does not survive TOML")  # never write a file the agent would read otherwise
    return rendered
