"""Where models and their versions live on disk.

A `--model` path is one of (the layouts Triton and TF Serving use):

- a model file: one version (`--model-version`, default "1"), named by `--name` or the file stem;
- a model directory: `NAME/1/model.onnx`, `NAME/2/model.onnx`, …, named by the directory;
- a model root: `ROOT/NAME/VERSION/model.onnx` for several models at once.

Version directories are whole numbers; anything else beside them (`3.tmp/`, `.incoming/`) is
ignored, so a version can be staged under another name and renamed in place atomically.
With a model root configured, every model path must resolve (symlinks followed) inside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"


class ModelPathError(ValueError):
    """A configured model path cannot be served; the message names the path and the problem."""


@dataclass(frozen=True)
class ModelSource:
    """One configured model: its name and where its versions are.

    directory: a model directory (versions are its numbered subdirectories), or None for a single
    file; file: that file; version: the single file's version label.
    """

    name: str
    directory: Path | None
    file: Path | None = None
    version: str = ""


@dataclass(frozen=True)
class FileSignature:
    """What identifies a file's content cheaply: a change means a new or rewritten file."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class VersionFile:
    """One version of a model as found on disk."""

    name: str
    version: str
    path: Path
    signature: FileSignature


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key: whole numbers numerically ("10" after "9"), any other label before them."""
    return (1, int(version)) if version.isdigit() else (0, version)


def is_inside(path: Path, root: Path) -> bool:
    """True when path, symlinks resolved, is root or under it."""
    return path.resolve().is_relative_to(root.resolve())


def resolve_sources(
    model_paths: Sequence[str], name: str, version: str, model_root: str
) -> list[ModelSource]:
    """The models to serve from the configured paths (or, with none, everything in model_root).

    Raises ModelPathError for a missing path, one outside model_root, a directory with no model
    layout, `--name` with several models, or two models with the same name.
    """
    root = Path(model_root) if model_root else None
    if root is not None and not root.is_dir():
        raise ModelPathError(f"model root {root} is not a directory")
    paths = [Path(path) for path in model_paths] or ([root] if root is not None else [])
    sources: list[ModelSource] = []
    for path in paths:
        if root is not None and not is_inside(path, root):
            raise ModelPathError(
                f"model path {path} resolves to {path.resolve()}, outside the model root {root}"
            )
        sources += _sources_at(path, version)
    if name:
        if len(sources) != 1:
            raise ModelPathError(f"--name {name!r} needs exactly one model; got {len(sources)}")
        sources = [ModelSource(name, sources[0].directory, sources[0].file, sources[0].version)]
    seen: dict[str, ModelSource] = {}
    for source in sources:
        if source.name in seen:
            raise ModelPathError(
                f"two models are named {source.name!r} "
                f"({_where(seen[source.name])} and {_where(source)}); rename one"
            )
        seen[source.name] = source
    return sources


def _sources_at(path: Path, version: str) -> list[ModelSource]:
    if path.is_file():
        return [ModelSource(path.stem, None, path, version)]
    if not path.is_dir():
        raise ModelPathError(f"model path {path} does not exist")
    if _version_dirs(path):
        return [ModelSource(path.name, path)]
    models = sorted(child for child in path.iterdir() if child.is_dir() and _version_dirs(child))
    if not models and all((path / name).is_file() for name in RUN_DIRECTORY_FILES):
        raise ModelPathError(
            f"model path {path} is a training run directory, not a model: make a model from it "
            f"with `bnserve export {path} --out model.onnx`, then serve that"
        )
    if not models:
        raise ModelPathError(
            f"model path {path} holds no model: expected {path}/VERSION/{MODEL_FILE} (a model "
            f"directory) or {path}/NAME/VERSION/{MODEL_FILE} (a model root)"
        )
    return [ModelSource(child.name, child) for child in models]


# files of every run directory `bnserve train` writes (docs/contracts.md); the server reads none
RUN_DIRECTORY_FILES = ("config.json", "meta.json", "params.npz")


def _version_dirs(directory: Path) -> list[Path]:
    try:
        return [child for child in directory.iterdir() if child.name.isdigit() and child.is_dir()]
    except OSError:
        return []


def _where(source: ModelSource) -> str:
    return str(source.directory if source.directory is not None else source.file)


def scan_versions(source: ModelSource, model_root: str = "") -> list[VersionFile]:
    """The versions of a model on disk now, oldest first.

    A version directory without its model.onnx (yet) is skipped; so is one whose file resolves
    outside model_root (a symlink pointing elsewhere). Raises OSError if the model directory
    itself cannot be listed.
    """
    if source.directory is None:
        assert source.file is not None
        return [VersionFile(source.name, source.version, source.file, signature(source.file))]
    found = []
    for child in source.directory.iterdir():
        if not child.name.isdigit():
            continue
        path = child / MODEL_FILE
        try:
            if not path.is_file():
                continue
            if model_root and not is_inside(path, Path(model_root)):
                continue
            found.append(VersionFile(source.name, child.name, path, signature(path)))
        except OSError:
            continue  # vanished while we looked: the next scan sees the new state
    return sorted(found, key=lambda version_file: version_key(version_file.version))


def signature(path: Path) -> FileSignature:
    """The file's size, modification time and inode (raises OSError if it is gone)."""
    stat = os.stat(path)
    return FileSignature(stat.st_size, stat.st_mtime_ns, stat.st_ino)


def is_settled(file_signature: FileSignature, now_ns: int, settle_s: float) -> bool:
    """True when the file has not been modified for settle_s seconds, so no writer is still
    filling it (a file moved in whole keeps its old mtime and counts as settled at once)."""
    return now_ns - file_signature.mtime_ns >= settle_s * 1e9
