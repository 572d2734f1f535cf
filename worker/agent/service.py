"""`dcluster-agent install-service`: the systemd unit (package data: worker/agent/systemd) and the config file."""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dcl_core import secret_files
from worker.agent import config_file
from worker.agent import state as state_mod

SERVICE = "dcluster-agent"
UNIT_DIR = Path("/etc/systemd/system")
TEMPLATE = "dcluster-agent.service"
# install-service's own options: never written into the agent's config.
# What a config written from scratch must hold for the agent to start.
REQUIRED = ("platform_url", "username", "price_per_gpu_hour", "price_per_cpu_hour")
OWN_OPTIONS = frozenset({"unit_dir", "no_start", "dry_run", "config", "log_level"})


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unit-dir", type=Path, default=UNIT_DIR, help=f"Where the unit goes (default {UNIT_DIR})")
    parser.add_argument(
        "--no-start", action="store_true", help="Write the unit and the config only: no systemctl daemon-reload/enable"
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the unit and the config; write nothing")


def template_file() -> Path:
    """The unit's template, package data beside this module (installed from the wheel or a checkout)."""
    return Path(str(importlib.resources.files("worker.agent") / "systemd" / TEMPLATE))


def template() -> str:
    return template_file().read_text()


def agent_executable() -> Path:
    """The dcluster-agent of this installation (the venv's), so the service runs the code that wrote it."""
    beside = Path(sys.executable).parent / SERVICE
    if beside.exists():
        return beside
    found = shutil.which(SERVICE)
    if found is None:
        raise FileNotFoundError(f"no {SERVICE} beside {sys.executable} nor on PATH")
    return Path(found)


def _systemd_path(path: Path) -> str:
    text = str(path)
    if any(c.isspace() or c in "\"'\\;" for c in text):
        raise ValueError(f"{text!r}: a path for the unit may hold no whitespace, quote, backslash or ';'")
    return text.replace("%", "%%")  # systemd reads % as a specifier


def render_unit(executable: Path, config: Path) -> str:
    unit = template().replace("@EXEC@", _systemd_path(executable)).replace("@CONFIG@", _systemd_path(config))
    assert "@" not in unit.split("[Unit]", 1)[1], "a placeholder of the template was left"
    return unit


def config_values(args: argparse.Namespace, defaults: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """The options that differ from their defaults, as config keys; the state dir always (the service's HOME
    may not be the one the agent ran with by hand)."""
    values: dict[str, Any] = {}
    for key, action in keys.items():
        if action.dest in OWN_OPTIONS:
            continue
        value = getattr(args, action.dest)
        if value is None or value == defaults.get(action.dest):
            continue
        values[key] = str(Path(value).absolute()) if isinstance(value, Path) else value
    state_dir = args.state_dir if args.state_dir is not None else state_mod.default_state_dir()
    values["state_dir"] = str(Path(state_dir).expanduser().absolute())
    return values


def install(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    defaults: Mapping[str, Any],
    *,
    run: Callable[[list[str]], int] = lambda argv: subprocess.run(argv, check=False).returncode,
) -> int:
    config = (args.config or config_file.DEFAULT_PATH).absolute()
    values = config_values(args, defaults, config_file.settable(parser))
    try:
        unit = render_unit(agent_executable(), config)
        rendered = config_file.render(values)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    missing = [f"--{key.replace('_', '-')}" for key in REQUIRED if key not in values]
    if missing and not config.exists():
        parser.error(f"{config} does not exist yet and the agent needs {', '.join(missing)} in it: nothing written")
    unit_path = args.unit_dir / f"{SERVICE}.service"
    if args.dry_run:
        print(f"# {unit_path}\n{unit}")
        print(f"# {config}" + (" (exists: kept as it is)" if config.exists() else "") + f"\n{rendered}")
        return 0
    if config.exists():
        print(f"{config} exists: kept as it is (the options given here are not written)")
    else:
        secret_files.ensure_private_dir(config.parent)
        secret_files.write_secret_file(config, rendered)  # 0600: it names the password file and the account
        print(f"wrote {config}")
    args.unit_dir.mkdir(parents=True, exist_ok=True)
    partial = unit_path.with_name(unit_path.name + ".new")
    partial.write_text(unit)
    os.chmod(partial, 0o644)
    os.replace(partial, unit_path)
    print(f"wrote {unit_path}")
    if args.no_start:
        print(f"not started (--no-start): systemctl daemon-reload && systemctl enable --now {SERVICE}")
        return 0
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", SERVICE]):
        code = run(argv)
        if code != 0:
            print(f"`{' '.join(argv)}` failed (exit {code}); the files are written", file=sys.stderr)
            return 1
    print(f"{SERVICE} is enabled and started: journalctl -u {SERVICE} -f")
    return 0
