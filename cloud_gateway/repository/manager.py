"""The model repository at run time: which versions exist, which are loaded, and when to evict.

Loading happens on a loader thread so a slow load never stalls requests to other models;
concurrent requests for a model that is loading wait for the one load in flight instead
of starting their own (a burst on a cold model loads it once). When a load would exceed
the memory budget, the least recently used idle versions are unloaded first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_gateway.backends import Backend, load_backend
from cloud_gateway.repository.config import ModelConfig, artifact_path
from cloud_gateway.repository.files import (
    CHECKSUMS,
    estimate_bytes,
    verify_checksums,
    version_files,
)
from cloud_gateway.scheduler import BatchingConfig, DynamicBatcher, Tensors
from edgeserve.wire.errors import EdgeServeError, InternalError, ModelNotFound, Unavailable, shown

log = logging.getLogger(__name__)
CONFIG_NAME = "config.toml"
RESCAN_INTERVAL_S = 1.0


@dataclass(eq=False)
class LoadedVersion:
    """One model version in memory, with its batcher; ``in_flight`` protects it from eviction."""

    config: ModelConfig
    version: str
    backend: Backend
    batcher: DynamicBatcher
    loaded_at: float
    load_seconds: float
    files_estimate: int = 0  # the memory estimate from every file of the model
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def memory_bytes(self) -> int:
        # The backend sizes model.onnx alone; external data files count too.
        return max(self.backend.memory_bytes, self.files_estimate)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """What the repository folder offers for one model."""

    config: ModelConfig
    path: Path
    versions: list[str]  # the versions the policy serves, oldest first


class ModelRepository:
    def __init__(
        self,
        root: Path,
        memory_budget_bytes: int,
        inference_executor: Executor,
        on_batch: Callable[[str, str, int, list[float]], None] | None = None,
        on_change: Callable[[], None] | None = None,
        on_compute: Callable[[str, float], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = root
        self.memory_budget_bytes = memory_budget_bytes
        self._inference_executor = inference_executor
        self._on_batch = on_batch
        self._on_change = on_change
        self._on_compute = on_compute
        self._on_event = on_event
        self._loaded: dict[tuple[str, str], LoadedVersion] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[LoadedVersion]] = {}
        self._failures: dict[str, str] = {}
        self._entries: dict[str, ModelEntry] = {}
        self._signature: tuple[tuple[str, int], ...] = ()
        self._scanned_at = -RESCAN_INTERVAL_S

    # -- what exists ---------------------------------------------------------------------

    def entries(self, refresh: bool = False) -> dict[str, ModelEntry]:
        """What the folder offers; re-read when a config or version folder changed.

        Requests call this on every inference, so the folder is stat-ed at most once per
        ``RESCAN_INTERVAL_S`` and parsed again only when something in it changed.
        """
        now = time.monotonic()
        if not refresh and now - self._scanned_at < RESCAN_INTERVAL_S:
            return self._entries
        self._scanned_at = now
        signature = _signature(self.root)
        if refresh or signature != self._signature:
            self._signature = signature
            self._entries = self._parse()
        return self._entries

    def _parse(self) -> dict[str, ModelEntry]:
        found: dict[str, ModelEntry] = {}
        for config_file in sorted(self.root.glob(f"*/{CONFIG_NAME}")):
            try:
                config = ModelConfig.load(config_file)
            except EdgeServeError as exc:
                self._failures[config_file.parent.name] = exc.message
                continue
            found[config.name] = ModelEntry(
                config, config_file.parent, _served(config, config_file)
            )
        return found

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries().get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {shown(name)!r}")
        if not entry.versions:
            raise ModelNotFound(f"model {shown(name)!r} has no version to serve")
        return entry

    def loaded(self) -> list[LoadedVersion]:
        return list(self._loaded.values())

    def index(self) -> list[dict[str, Any]]:
        """The repository extension's index: every servable version and its state."""
        rows: list[dict[str, Any]] = []
        for name, entry in self.entries(refresh=True).items():
            for version in entry.versions:
                key = (name, version)
                state = "READY" if key in self._loaded else "UNAVAILABLE"
                state = "LOADING" if key in self._loading else state
                row = {"name": name, "version": version, "state": state}
                if state == "UNAVAILABLE" and name in self._failures:
                    row["reason"] = self._failures[name]
                rows.append(row)
        return rows

    @property
    def memory_in_use(self) -> int:
        return sum(version.memory_bytes for version in self._loaded.values())

    # -- load, get, unload -----------------------------------------------------------------

    async def get(self, name: str, version: str | None = None) -> LoadedVersion:
        """A loaded version, loading it on first use (requests wait for the load)."""
        entry = self.entry(name)
        wanted = version or entry.versions[-1]
        if wanted not in entry.versions:
            raise ModelNotFound(f"model {shown(name)!r} has no servable version {shown(wanted)!r}")
        loaded = self._loaded.get((name, wanted))
        if loaded is None:
            loaded = await self._load_once(entry, wanted)
        loaded.last_used = time.monotonic()
        return loaded

    async def load(self, name: str) -> list[LoadedVersion]:
        """Explicit load (repository API): every version the policy serves."""
        self.entries(refresh=True)
        entry = self.entry(name)
        return [await self.get(name, version) for version in entry.versions]

    async def preload(self, names: list[str]) -> list[str]:
        """Load ``names`` (``"*"``: every model, in name order) at start, each model's
        newest version, as far as the memory budget allows without evicting another
        preload; returns what was loaded. A model that does not fit or fails to load is
        logged and skipped: it still loads on first use."""
        self.entries(refresh=True)
        wanted = sorted(self._entries) if "*" in names else names
        loaded: list[str] = []
        for name in wanted:
            try:
                entry = self.entry(name)
                version = entry.versions[-1]
                artifact = artifact_path(entry.path / version, entry.config.backend)
                needed = estimate_bytes(entry.config, version_files(artifact, entry.config))
                if self.memory_in_use + needed > self.memory_budget_bytes:
                    log.info("not preloaded: over the memory budget", extra={"model": name})
                    continue
                await self.get(name, version)
            except EdgeServeError as exc:
                log.warning("preload failed", extra={"model": name, "reason": exc.message})
                continue
            loaded.append(name)
        return loaded

    async def unload(self, name: str) -> int:
        """Explicit unload: stop each version's batcher, then release its backend."""
        victims = [v for key, v in self._loaded.items() if key[0] == name]
        if not victims and name not in self.entries():
            raise ModelNotFound(f"unknown model {shown(name)!r}")
        for victim in victims:
            await self._drop(victim)
        return len(victims)

    async def close(self) -> None:
        for version in list(self._loaded.values()):
            await self._drop(version)

    async def _load_once(self, entry: ModelEntry, version: str) -> LoadedVersion:
        key = (entry.config.name, version)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            try:
                pending.set_result(await self._load(entry, version))
            except BaseException as exc:
                pending.set_exception(exc)
                # Nobody else may be waiting: mark the exception retrieved.
                pending.exception()
            finally:
                del self._loading[key]
        return await asyncio.shield(pending)

    async def _load(self, entry: ModelEntry, version: str) -> LoadedVersion:
        config = entry.config
        started = time.perf_counter()
        try:
            # The estimate the backend will report once loaded, before paying for the load.
            artifact = artifact_path(entry.path / version, config.backend)
            files = version_files(artifact, config)
            estimate = estimate_bytes(config, files)
            await self._make_room(estimate, config.name)
            checked = await asyncio.to_thread(verify_checksums, entry.path / version, files)
            backend = await asyncio.to_thread(load_backend, config, entry.path / version)
        except EdgeServeError as exc:
            self._failures[config.name] = exc.message
            raise
        except Exception as exc:
            self._failures[config.name] = str(exc)
            raise InternalError(f"loading {config.name}/{version} failed: {exc}") from exc
        self._failures.pop(config.name, None)
        loaded = LoadedVersion(
            config,
            version,
            backend,
            self._batcher(config, version, backend),
            loaded_at=time.time(),
            load_seconds=time.perf_counter() - started,
            files_estimate=estimate,
        )
        loaded.batcher.start()
        self._loaded[(config.name, version)] = loaded
        self._event("load", config.name)
        log.info(
            "model loaded",
            extra={
                "model": config.name,
                "version": version,
                "backend": backend.name,
                "providers": backend.providers,
                "device": backend.device,
                "seconds": round(loaded.load_seconds, 3),
                "bytes": loaded.memory_bytes,
                "files": [path.name for path in files],
                "checksums": CHECKSUMS if checked else None,
            },
        )
        self._changed()
        return loaded

    def _batcher(self, config: ModelConfig, version: str, backend: Backend) -> DynamicBatcher:
        settings = config.batching
        batching = BatchingConfig(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_us / 1e6,
            preferred_batch_sizes=settings.preferred_batch_sizes,
            max_queue_size=settings.max_queue_size,
            default_priority_level=settings.default_priority_level,
            enabled=settings.enabled,
            max_concurrent_batches=max(settings.max_concurrent_batches, config.instances),
            dispatch_when_idle=settings.dispatch_when_idle,
        )
        on_batch = None
        if self._on_batch is not None:
            report = self._on_batch

            def on_batch(size: int, waits: list[float]) -> None:
                report(config.name, version, size, waits)

        return DynamicBatcher(
            self._timed(config.name, backend),
            self._inference_executor,
            batching,
            on_batch=on_batch,
            model=f"{config.name}/{version}",
        )

    def _timed(self, name: str, backend: Backend) -> Callable[[Tensors], Tensors]:
        report = self._on_compute
        if report is None:
            return backend.run

        def run(inputs: Tensors) -> Tensors:
            started = time.perf_counter()
            outputs = backend.run(inputs)
            report(name, time.perf_counter() - started)
            return outputs

        return run

    async def _make_room(self, needed: int, loading: str) -> None:
        """Unload least recently used idle versions until ``needed`` bytes fit the budget."""
        if needed > self.memory_budget_bytes:
            raise Unavailable(
                f"model '{loading}' needs ~{needed} bytes, over the whole budget of "
                f"{self.memory_budget_bytes}"
            )
        idle = sorted(
            (v for v in self._loaded.values() if v.in_flight == 0), key=lambda v: v.last_used
        )
        while self.memory_in_use + needed > self.memory_budget_bytes:
            if not idle:
                raise Unavailable(
                    f"memory budget full: cannot load '{loading}' while every loaded model is busy"
                )
            victim = idle.pop(0)
            log.info("evicting model", extra={"model": victim.name, "version": victim.version})
            self._event("evict", victim.name)
            await self._drop(victim)

    async def _drop(self, version: LoadedVersion) -> None:
        self._loaded.pop((version.name, version.version), None)
        await version.batcher.stop()
        await asyncio.to_thread(version.backend.close)
        log.info("model unloaded", extra={"model": version.name, "version": version.version})
        self._changed()

    def _event(self, kind: str, model: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, model)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _signature(root: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of every config file and model folder: cheap change detection."""
    paths = [*root.glob(f"*/{CONFIG_NAME}"), *root.glob("*/*/")]
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in paths if p.exists()))


def _served(config: ModelConfig, config_file: Path) -> list[str]:
    present = sorted(
        (p.name for p in config_file.parent.iterdir() if p.is_dir() and p.name.isdigit()),
        key=int,
    )
    policy = config.version_policy
    if policy.specific is not None:
        return [v for v in present if v in policy.specific]
    return present[-(policy.latest or 1) :]
