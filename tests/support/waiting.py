"""Poll until something a test waits for has happened: one loop for every test.

A timeout here bounds a hang; it is not a timing assertion (the machine may be loaded).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.005) -> bool:
    """Call condition every interval_s until it is true (True) or timeout_s has passed (False,
    after one last look)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


def wait_until(
    condition: Callable[[], object], what: str, timeout_s: float = 10.0, interval_s: float = 0.005
) -> None:
    """Poll condition (see `poll`); fail naming `what` if it is not true within timeout_s."""
    assert poll(condition, timeout_s, interval_s), f"{what}: not reached within {timeout_s} s"
