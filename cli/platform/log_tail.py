"""What a process the platform started wrote: a log's last lines, what was appended since an offset."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def last_reason(path: Path) -> str:
    """Why a process that wrote this log stopped, as it said it: its last line naming an error (an
    argparse "error:", a logged ERROR, an exception), else its last line."""
    lines = [line.strip() for line in tail(path, 200).splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "exception" in line.lower():
            return line
    return lines[-1] if lines else "(its log is empty)"


def size(path: Path) -> int:
    """Where what is appended next will start."""
    return path.stat().st_size if path.exists() else 0


def read_from(path: Path, offset: int) -> str:
    """What was appended to a log since offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""
