"""ModelRepository: lookup by name and version, atomic swaps, readiness bookkeeping."""

from __future__ import annotations

import pytest

from bnserve.server.models.repository import FAILED, READY, ModelRepository
from bnserve.server.models.servable import Servable
from bnserve.server.plane.errors import ModelNotFound, ModelNotReady


class _Tag(Servable):
    """A Servable stand-in that only carries a label (the repository never looks inside)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.batcher = None


def test_lookup_by_name_and_version_and_newest() -> None:
    repository = ModelRepository()
    for version in ["1", "2", "10"]:
        repository.swap("iris", version, _Tag(f"iris-{version}"))
    assert repository.get("iris").label == "iris-10"  # numeric order, not text order
    assert repository.get("iris", "2").label == "iris-2"
    assert repository.get("").label == "iris-10"  # the only model
    assert repository.versions("iris") == ["1", "2", "10"]
    with pytest.raises(ModelNotFound, match=r"no version '3' \(it has: 1, 2, 10\)"):
        repository.get("iris", "3")
    with pytest.raises(ModelNotFound, match=r"no model named 'rose' \(this server has: iris\)"):
        repository.get("rose")


def test_swap_replaces_atomically_and_returns_previous() -> None:
    repository = ModelRepository()
    assert repository.swap("iris", "1", _Tag("old")) is None
    held = repository.get("iris")
    previous = repository.swap("iris", "1", _Tag("new"))
    assert previous is held and held.label == "old"  # in-flight holders keep theirs
    assert repository.get("iris").label == "new"
    assert repository.remove("iris", "1").label == "new"
    with pytest.raises(ModelNotFound):
        repository.get("iris")
    assert not repository.ready  # nothing configured any more


def test_readiness_and_failed_models() -> None:
    repository = ModelRepository()
    assert not repository.ready
    repository.mark_loading("iris", "1")
    assert not repository.ready
    with pytest.raises(ModelNotReady, match="is loading"):
        repository.get("iris")
    repository.swap("iris", "1", _Tag("iris"))
    assert repository.ready and repository.status("iris").state == READY
    repository.mark_failed("rose", "1", "parity gate failed")
    assert not repository.ready
    assert repository.status("rose").state == FAILED
    with pytest.raises(ModelNotReady, match="is failed: parity gate failed"):
        repository.get("rose")
    assert repository.get("").label == "iris"  # the only model being served
    repository.swap("rose", "1", _Tag("rose"))
    with pytest.raises(ModelNotFound, match="set model_name"):
        repository.get("")
    repository.mark_failed("iris", "1", "reload failed")  # a served version stays served
    assert repository.get("iris").label == "iris"
