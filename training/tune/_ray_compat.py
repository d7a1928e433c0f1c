"""The tuner's uses of Ray's private names, in one place, each with the version it was checked
against (training may not import server/, whose server/_compat.py does the same for grpcio and
onnxruntime). Each falls back to Ray's default behaviour, logged once, when the name is gone;
tests/training/tune/test_ray_compat.py removes each name and sees the fallback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

RAY_CHECKED = "2.60.0"
RAY_CONSTANTS = "ray._private.ray_constants"
TOKEN_SETUP = "ray._private.authentication.authentication_token_setup"
_warned: set[str] = set()


def _warn_once(name: str, consequence: str) -> None:
    if name not in _warned:
        _warned.add(name)
        log.warning("Ray has no %s (checked in Ray %s): %s", name, RAY_CHECKED, consequence)


def disable_cluster_address_rewrite() -> None:
    """Set ray_constants.ENABLE_RAY_CLUSTER to False in an already imported Ray (it reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER only at import), so a loopback address stays one."""
    constants: Any = sys.modules.get(RAY_CONSTANTS)
    if constants is None:
        return  # Ray not imported yet: it will read the environment variable itself
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        _warn_once(f"{RAY_CONSTANTS}.ENABLE_RAY_CLUSTER", "a loopback address may be rewritten")
        return
    constants.ENABLE_RAY_CLUSTER = False


def reread_auth_mode() -> None:
    """Have Ray read RAY_AUTH_MODE again (it caches its config at import), as Ray's CLI does."""
    try:
        module: Any = __import__(TOKEN_SETUP, fromlist=["_enable_token_auth"])
        enable = module._enable_token_auth
    except (ImportError, AttributeError):
        _warn_once(
            f"{TOKEN_SETUP}._enable_token_auth",
            "token authentication is on only if Ray was imported after RAY_AUTH_MODE=token",
        )
        return
    enable()
