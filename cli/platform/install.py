"""Where this installation is: the directory that holds its packages, and its console scripts."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cli.platform.errors import PlatformError

# The directory that holds cli/, worker/, serve_app/ ... (a checkout, or site-packages).
REPO_ROOT = Path(__file__).resolve().parents[2]


def venv_script(name: str) -> list[str]:
    """A console script installed beside this interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise PlatformError(f"{path} not found; install the project into this interpreter (pip install -e .)")
    return [str(path)]


def with_our_pythonpath(env: Mapping[str, str]) -> str:
    """PYTHONPATH for a process we start: this installation first, then the caller's."""
    old = env.get("PYTHONPATH")
    return str(REPO_ROOT) + (os.pathsep + old if old else "")
