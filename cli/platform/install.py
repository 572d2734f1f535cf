"""Where this installation's console scripts are (the programs the platform's operations start)."""

from __future__ import annotations

import sys
from pathlib import Path

from cli.platform.errors import PlatformError


def venv_script(name: str) -> list[str]:
    """A console script installed beside this interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise PlatformError(f"{path} not found; install decentralized-clusters into this virtualenv (pip install)")
    return [str(path)]
