"""Keep the served versions in step with the model directories: load new, reload changed, unload
removed — each new file verified and warmed before it is swapped in, a bad one refused.

A scan runs at start-up, every `reload_interval_s` seconds, and at once on `request_scan()`
(SIGHUP). Files written in place are loaded only once unmodified for `reload_settle_s`; a file
that fails verification is refused (logged, counted) until it changes, and whatever served
before keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bnserve.server.models.repository import ModelRepository
from bnserve.server.models.servable import Servable
from bnserve.server.models.shadow import read_shadow
from bnserve.server.models.versions import (
    FileSignature,
    ModelSource,
    VersionFile,
    is_settled,
    scan_versions,
    version_key,
)
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.errors import ModelLoadError

log = logging.getLogger(__name__)

LoadServable = Callable[[Path, str, str], Servable]  # (path, name, version) → verified, warmed


@dataclass(frozen=True)
class ReloadPolicy:
    """How versions on disk become served versions."""

    max_versions: int  # serve the newest N good versions of each model; 0: every one on disk
    settle_s: float  # a file written in place must be unmodified this long before it is read
    interval_s: float  # seconds between directory scans; 0: only at start and on request


def retire(servable: Servable | None) -> None:
    """Close a servable taken out of the repository once no call holds it any more.

    A call that fetched it just before the swap may still be about to submit to its batcher;
    closing the batcher now would leave that call waiting forever, so the close waits for the
    last reference to go (CPython frees it as soon as that call returns).
    """
    if servable is not None and servable.batcher is not None:
        weakref.finalize(servable, servable.batcher.close)


class VersionManager:
    """Loads, swaps and unloads model versions as the configured sources change on disk."""

    def __init__(
        self,
        sources: Sequence[ModelSource],
        load: LoadServable,
        repository: ModelRepository,
        policy: ReloadPolicy,
        *,
        model_root: str = "",
        on_change: Callable[[], None] = lambda: None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.sources = tuple(sources)
        self._load = load
        self._repository = repository
        self._policy = policy
        self._model_root = model_root
        self._on_change = on_change
        self._metrics = metrics
        self._loaded: dict[tuple[str, str], FileSignature] = {}
        self._refused: dict[tuple[str, str], FileSignature] = {}
        self._scan_lock = threading.Lock()  # one scan at a time (poller and SIGHUP)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self, *, initial: bool = False) -> None:
        """Bring every model in step with its directory once. At start-up (initial) files are
        read at once; a half-written one fails verification and is retried when it changes."""
        with self._scan_lock:
            for source in self.sources:
                self._sync(source, initial)
        self._on_change()

    def start(self) -> None:
        """Scan in a background thread every interval and whenever `request_scan` is called."""
        self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)
        self._thread.start()

    def request_scan(self) -> None:
        """Ask for a scan now (safe from a signal handler)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop scanning (a scan in progress finishes first)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        interval = self._policy.interval_s or None
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.scan()
            except Exception:  # a scan must never kill the watcher; the next one retries
                log.exception("model directory scan failed")

    def _sync(self, source: ModelSource, initial: bool) -> None:
        try:
            on_disk = {found.version: found for found in scan_versions(source, self._model_root)}
        except OSError as error:
            log.warning(
                "model %s: cannot read %s (%s); serving what is loaded",
                source.name,
                source.directory if source.directory is not None else source.file,
                error.strerror,
            )
            return
        self._unload_removed(source.name, on_disk)
        shadow_before = self._repository.shadow(source.name)
        if source.directory is not None:
            # Marked before any new version loads: a version dropped in with its mark between two
            # scans is the shadow from its first moment, never served.
            self._repository.set_shadow(source.name, read_shadow(source.directory))
        kept: list[str] = []
        for version in sorted(on_disk, key=version_key, reverse=True):
            if self._policy.max_versions and len(kept) >= self._policy.max_versions:
                break
            if self._bring_up(on_disk[version], initial):
                kept.append(version)
        for version in self._loaded_versions(source.name):
            if version not in kept and self._policy.max_versions:
                self._unload(source.name, version, "beyond the newest max_versions")
        if source.directory is not None:
            self._report_shadow(source.name, shadow_before)

    def _report_shadow(self, name: str, before: Servable | None) -> None:
        """Log the model's shadow (models/shadow.py) when this scan changed it."""
        after = self._repository.shadow(name)
        if after is not before:
            serving = self._repository.serving(name)
            log.info(
                "model %s: %s; version %s serving",
                name,
                f"version {after.model.version} is the shadow" if after else "no shadow",
                serving.model.version if serving is not None else "none",
            )

    def _bring_up(self, found: VersionFile, initial: bool) -> bool:
        """Load found unless it is loaded already; True when it is being served afterwards."""
        key = (found.name, found.version)
        serving = key in self._loaded
        if self._loaded.get(key) == found.signature:
            return True
        if self._refused.get(key) == found.signature:
            return serving
        if not initial and not is_settled(found.signature, time.time_ns(), self._policy.settle_s):
            return serving  # still being written (or just touched): look again next scan
        what = "reloading changed" if serving else "loading"
        log.info("model %s: %s version %s from %s", found.name, what, found.version, found.path)
        self._repository.mark_loading(found.name, found.version)
        try:
            servable = self._load(found.path, found.name, found.version)
        except Exception as error:  # refused once, counted once, retried only when it changes
            if not isinstance(error, ModelLoadError):
                log.exception("model %s: version %s: unexpected error", found.name, found.version)
                error = ModelLoadError(f"model {found.path}: unexpected {type(error).__name__}")
            self._refused[key] = found.signature
            self._repository.mark_failed(found.name, found.version, str(error))
            if self._metrics is not None:  # counted before the log line that reports it
                self._metrics.reload_failed(found.name)
            kept = "keeps serving" if found.name in self._repository.names() else "has none of"
            log.error(
                "model %s: version %s refused: %s (the model %s its other versions)",
                found.name,
                found.version,
                error,
                kept,
            )
            return serving
        retire(self._repository.swap(found.name, found.version, servable))
        self._loaded[key] = found.signature
        self._refused.pop(key, None)
        if self._metrics is not None:
            self._metrics.version_loaded(found.name, found.version)
        shadow = self._repository.shadow(found.name) is servable
        log.info(
            "model %s: version %s %s (newest: %s)",
            found.name,
            found.version,
            "loaded as the shadow" if shadow else "serving",
            self._repository.versions(found.name)[-1],
        )
        return True

    def _unload_removed(self, name: str, on_disk: dict[str, VersionFile]) -> None:
        for version in self._loaded_versions(name):
            if version in on_disk:
                continue
            if len(self._loaded_versions(name)) == 1:
                log.warning(
                    "model %s: version %s is gone from disk but is the last one; still serving it",
                    name,
                    version,
                )
                continue
            self._unload(name, version, "its file is gone")
        for key in [key for key in self._refused if key[0] == name and key[1] not in on_disk]:
            del self._refused[key]
            self._repository.remove(*key)  # forget the failed status of a deleted file

    def _unload(self, name: str, version: str, reason: str) -> None:
        retire(self._repository.remove(name, version))
        self._loaded.pop((name, version), None)
        if self._metrics is not None:
            self._metrics.version_unloaded(name, version)
        log.info("model %s: version %s unloaded (%s)", name, version, reason)

    def _loaded_versions(self, name: str) -> list[str]:
        return sorted((v for n, v in self._loaded if n == name), key=version_key)
