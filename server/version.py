"""The bnserve version a server, a client or `bnserve --version` reports: the installed
distribution's metadata (pyproject.toml's `version`, as pip recorded it), stated nowhere else."""

from __future__ import annotations

from importlib import metadata


def installed_version() -> str:
    """bnserve's installed version, or "unknown" when run from a tree that was never installed."""
    try:
        return metadata.version("bnserve")
    except metadata.PackageNotFoundError:
        return "unknown"
