"""training/tune/_ray_compat.py: each private Ray name removed on purpose, and the fallback to
Ray's default behaviour, logged once."""

from __future__ import annotations

import logging
import sys
import types

from bnserve.training.tune import _ray_compat as compat


def test_loopback_constant_is_set_and_its_absence_logged_once(monkeypatch, caplog) -> None:
    constants = types.SimpleNamespace(ENABLE_RAY_CLUSTER=True)
    monkeypatch.setitem(sys.modules, compat.RAY_CONSTANTS, constants)
    compat.disable_cluster_address_rewrite()
    assert constants.ENABLE_RAY_CLUSTER is False

    monkeypatch.setitem(sys.modules, compat.RAY_CONSTANTS, types.SimpleNamespace())
    monkeypatch.setattr(compat, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.disable_cluster_address_rewrite()
        compat.disable_cluster_address_rewrite()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "ENABLE_RAY_CLUSTER" in messages[0], messages
    assert compat.RAY_CHECKED in messages[0]


def test_token_reread_without_ray_private_module_falls_back_logged_once(
    monkeypatch, caplog
) -> None:
    monkeypatch.setattr(compat, "TOKEN_SETUP", "ray._private.no_such_module_in_this_ray")
    monkeypatch.setattr(compat, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        compat.reread_auth_mode()
        compat.reread_auth_mode()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "_enable_token_auth" in messages[0], messages


def test_token_reread_calls_rays_function(monkeypatch) -> None:
    called = []
    module = types.ModuleType("fake_token_setup")
    module._enable_token_auth = lambda: called.append(True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_token_setup", module)
    monkeypatch.setattr(compat, "TOKEN_SETUP", "fake_token_setup")
    compat.reread_auth_mode()
    assert called == [True]
