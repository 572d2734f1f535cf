"""Where this installation's console scripts are (the programs the platform's operations start)."""

from __future__ import annotations

import sys
from pathlib import Path

from cli.platform.errors import PlatformError
from dcl_core import extras


def venv_script(name: str) -> list[str]:
    """A console script installed beside this interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise PlatformError(f"{path} not found; install decentralized-clusters into this virtualenv (pip install)")
    return [str(path)]


def require_platform(command: str) -> None:
    """Stops a platform command at once, naming the pip command, where this install lacks the [platform] extra
    (a buyer's install is the CLI alone)."""
    absent = extras.missing("platform")
    if absent:
        raise PlatformError(
            f"`dcluster {command}` runs the platform, whose packages this install lacks ({', '.join(absent)}); "
            f"install them with: {extras.install_command('platform')}"
        )
