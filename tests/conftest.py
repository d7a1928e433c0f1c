"""Suite-wide: the float32 data cache (training/cache.py) lives in a temporary directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _data_cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BNSERVE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "data-cache"))
