"""Models by name and version; each can be swapped atomically while calls are in flight."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bnserve.server.models.servable import Servable
from bnserve.server.models.versions import version_key
from bnserve.server.plane.errors import ModelNotFound, ModelNotReady

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(frozen=True)
class ModelStatus:
    """Where a configured model version stands; `error` says why it failed."""

    name: str
    version: str
    state: str
    error: str = ""


class ModelRepository:
    """Name → version → Servable, plus the status of every configured version.

    Readers never lock: the tables are replaced whole (copy-on-write) under a writer lock, so a
    swap is atomic and a call in flight keeps the Servable it already holds.
    """

    def __init__(self) -> None:
        self._write_lock = threading.Lock()
        self._servables: dict[str, dict[str, Servable]] = {}
        self._newest: dict[str, Servable] = {}
        self._statuses: dict[tuple[str, str], ModelStatus] = {}
        self._shadow_versions: dict[str, str] = {}  # name → the version marked shadow
        self._shadows: dict[str, Servable] = {}  # name → that version, loaded and not served

    def get(self, name: str, version: str = "") -> Servable:
        """The servable for name (empty: the only model) and version (empty: the newest)."""
        if not name:
            newest = self._newest
            configured = sorted({n for n, _ in self._statuses} | set(newest))
            if len(newest) == 1:
                name = next(iter(newest))
            elif not newest and len(configured) == 1:
                name = configured[0]  # its only model failed: say why, below
            else:
                raise ModelNotFound(
                    f"no model name given and this server serves {len(newest)} models "
                    f"({', '.join(sorted(newest)) or 'none'}; configured: "
                    f"{', '.join(configured) or 'none'}): set model_name"
                )
        if not version:
            servable = self._newest.get(name)
            if servable is not None:
                return servable
        else:
            servable = self._servables.get(name, {}).get(version)
            if servable is not None:
                return servable
        raise self._missing(name, version)

    def _missing(self, name: str, version: str) -> Exception:
        statuses = [s for (n, _), s in self._statuses.items() if n == name]
        if version:
            statuses = [s for s in statuses if s.version == version]
        not_ready = [s for s in statuses if s.state != READY]
        if not_ready:
            status = not_ready[0]
            reason = f": {status.error}" if status.error else ""
            return ModelNotReady(
                f"model {name!r} version {status.version!r} is {status.state}{reason}"
            )
        if name in self._servables:
            versions = ", ".join(sorted(self._servables[name], key=version_key))
            return ModelNotFound(f"model {name!r} has no version {version!r} (it has: {versions})")
        known = ", ".join(sorted(self._servables)) or "none"
        return ModelNotFound(f"no model named {name!r} (this server has: {known})")

    def shadow(self, name: str) -> Servable | None:
        """The model's shadow version (server/models/shadow.py), loaded; None without one."""
        return self._shadows.get(name)

    def serving(self, name: str) -> Servable | None:
        """The version a call naming no version gets (None: the model serves nothing)."""
        return self._newest.get(name)

    def set_shadow(self, name: str, version: str) -> None:
        """Mark `version` the shadow of model `name` ("": none): a call naming no version then
        gets the newest other version, and the shadow scores sampled calls beside it."""
        with self._write_lock:
            if self._shadow_versions.get(name, "") == version:
                return
            shadows = dict(self._shadow_versions)
            if version:
                shadows[name] = version
            else:
                shadows.pop(name, None)
            self._shadow_versions = shadows
            self._publish(name, dict(self._servables.get(name, {})))

    def versions(self, name: str) -> list[str]:
        """The ready versions of a model, oldest first."""
        return sorted(self._servables.get(name, {}), key=version_key)

    def names(self) -> list[str]:
        return sorted(self._servables)

    def status(self, name: str, version: str = "") -> ModelStatus:
        """A configured model's status (no version: its newest ready version, else its newest);
        raises ModelNotFound for one never configured."""
        matches = [
            s for (n, v), s in self._statuses.items() if n == name and (not version or v == version)
        ]
        if not matches:
            raise ModelNotFound(f"no model named {name!r} version {version or '(any)'!r}")
        ready = [s for s in matches if s.state == READY]
        return max(ready or matches, key=lambda s: version_key(s.version))

    def statuses(self) -> list[ModelStatus]:
        return list(self._statuses.values())

    @property
    def ready(self) -> bool:
        """True when at least one model is configured and every configured one serves at least
        one version (a refused new version leaves its model serving the older ones)."""
        names = {name for name, _ in self._statuses}
        servables = self._servables
        return bool(names) and all(name in servables for name in names)

    def mark_loading(self, name: str, version: str) -> None:
        """Record a version being loaded; a ready one stays served until swapped."""
        with self._write_lock:
            if (name, version) not in self._statuses:
                self._set_status(ModelStatus(name, version, LOADING))

    def mark_failed(self, name: str, version: str, error: str) -> None:
        """Record why a version cannot be served; a ready one already served is kept."""
        with self._write_lock:
            if self._servables.get(name, {}).get(version) is None:
                self._set_status(ModelStatus(name, version, FAILED, error))

    def swap(self, name: str, version: str, servable: Servable) -> Servable | None:
        """Serve `servable` as name/version from now on; returns the one it replaces (close it
        once in-flight calls are done)."""
        with self._write_lock:
            versions = dict(self._servables.get(name, {}))
            previous = versions.get(version)
            versions[version] = servable
            self._publish(name, versions)
            self._set_status(ModelStatus(name, version, READY))
            return previous

    def remove(self, name: str, version: str) -> Servable | None:
        """Stop serving and forget name/version; returns the removed servable."""
        with self._write_lock:
            versions = dict(self._servables.get(name, {}))
            previous = versions.pop(version, None)
            self._publish(name, versions)
            statuses = dict(self._statuses)
            statuses.pop((name, version), None)
            self._statuses = statuses
            return previous

    def _publish(self, name: str, versions: dict[str, Servable]) -> None:
        servables = dict(self._servables)
        newest = dict(self._newest)
        shadows = dict(self._shadows)
        shadows.pop(name, None)
        if versions:
            servables[name] = versions
            shadow = self._shadow_versions.get(name, "")
            served = [v for v in versions if v != shadow] or list(versions)
            newest[name] = versions[max(served, key=version_key)]
            if shadow in versions and versions[shadow] is not newest[name]:
                shadows[name] = versions[shadow]
        else:
            servables.pop(name, None)
            newest.pop(name, None)
        self._servables, self._newest, self._shadows = servables, newest, shadows

    def _set_status(self, status: ModelStatus) -> None:
        statuses = dict(self._statuses)
        statuses[(status.name, status.version)] = status
        self._statuses = statuses
