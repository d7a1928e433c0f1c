"""Model layouts on disk: a file, a model directory, a model root; the root confinement."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bnserve.server.models.versions import (
    ModelPathError,
    is_settled,
    resolve_sources,
    scan_versions,
    signature,
)


def _touch_model(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"model")
    return path


def test_file_is_one_version_named_by_stem(tmp_path: Path) -> None:
    model = _touch_model(tmp_path / "iris.onnx")
    (source,) = resolve_sources([str(model)], "", "7", "")
    assert (source.name, source.directory, source.file) == ("iris", None, model)
    assert source.version == "7"
    assert [(v.name, v.version, v.path) for v in scan_versions(source)] == [("iris", "7", model)]


def test_model_directory_lists_numbered_versions_in_order(tmp_path: Path) -> None:
    for version in ("1", "2", "10"):
        _touch_model(tmp_path / "iris" / version / "model.onnx")
    (tmp_path / "iris" / "3").mkdir()  # no model.onnx yet: not a version
    _touch_model(tmp_path / "iris" / ".staging-4" / "model.onnx")  # not a number: ignored
    _touch_model(tmp_path / "iris" / "5" / "other.onnx")  # wrong file name: ignored
    (source,) = resolve_sources([str(tmp_path / "iris")], "", "1", "")
    assert (source.name, source.directory) == ("iris", tmp_path / "iris")
    assert [v.version for v in scan_versions(source)] == ["1", "2", "10"]


def test_model_root_serves_every_model_inside(tmp_path: Path) -> None:
    _touch_model(tmp_path / "iris" / "1" / "model.onnx")
    _touch_model(tmp_path / "sales" / "3" / "model.onnx")
    (tmp_path / "notes").mkdir()  # a directory without versions is not a model
    by_root = resolve_sources([], "", "1", str(tmp_path))
    as_path = resolve_sources([str(tmp_path)], "", "1", "")
    assert [s.name for s in by_root] == [s.name for s in as_path] == ["iris", "sales"]


def test_name_renames_the_one_model(tmp_path: Path) -> None:
    _touch_model(tmp_path / "iris" / "1" / "model.onnx")
    (source,) = resolve_sources([str(tmp_path / "iris")], "flowers", "1", "")
    assert source.name == "flowers"


@pytest.mark.parametrize(
    ("layout", "args", "message"),
    [
        ([], (["missing.onnx"], "", ""), "missing.onnx does not exist"),
        (["empty/"], (["empty"], "", ""), "holds no model: expected"),
        (
            ["a/iris.onnx", "b/iris.onnx"],
            (["a/iris.onnx", "b/iris.onnx"], "", ""),
            "two models are named 'iris'",
        ),
        (["a.onnx", "b.onnx"], (["a.onnx", "b.onnx"], "x", ""), "--name 'x' needs exactly one"),
        (
            ["root/", "elsewhere/m.onnx"],
            (["elsewhere/m.onnx"], "", "root"),
            "outside the model root",
        ),
        ([], ([], "", "no-root"), "model root no-root is not a directory"),
    ],
)
def test_bad_model_paths_say_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout, args, message
) -> None:
    monkeypatch.chdir(tmp_path)
    for entry in layout:
        if entry.endswith("/"):
            Path(entry).mkdir(parents=True)
        else:
            _touch_model(Path(entry))
    paths, name, root = args
    with pytest.raises(ModelPathError, match=message):
        resolve_sources(paths, name, "1", root)


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = _touch_model(tmp_path / "outside" / "model.onnx")
    _touch_model(root / "iris" / "1" / "model.onnx")
    (root / "iris" / "2").mkdir()
    (root / "iris" / "2" / "model.onnx").symlink_to(outside)
    (root / "sneaky.onnx").symlink_to(outside)
    (source,) = resolve_sources([str(root / "iris")], "", "1", str(root))
    # The version whose file points outside the root is not a version at all.
    assert [v.version for v in scan_versions(source, str(root))] == ["1"]
    with pytest.raises(ModelPathError, match="outside the model root"):
        resolve_sources([str(root / "sneaky.onnx")], "", "1", str(root))


def test_settled_only_once_unmodified_for_settle_time(tmp_path: Path) -> None:
    path = _touch_model(tmp_path / "model.onnx")
    now_ns = time.time_ns()
    assert not is_settled(signature(path), now_ns, settle_s=60)
    past = time.time() - 120
    os.utime(path, (past, past))
    assert is_settled(signature(path), now_ns, settle_s=60)
    assert is_settled(signature(path), now_ns, settle_s=0)
