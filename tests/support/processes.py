"""Process states from /proc, for the tests that kill tune workers and coordinators."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Running, not exited and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
