"""Typed service configuration: defaults, then a TOML file, then ``EDGESERVE_*`` variables.

Each service declares one ``ServiceSettings`` subclass and builds it once in its
``main()`` with ``load_settings``; nothing reads configuration at import time. A relative
path written in a config file is relative to that file's folder (so ``agent.toml`` and
the key files beside it move together); files a service cannot start without are
checked at load, and every mistake is one ``ConfigError`` line naming the file and key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from edgeserve.wire.errors import InvalidInput

S = TypeVar("S", bound="ServiceSettings")


class ConfigError(InvalidInput):
    """A config that cannot work: a bad value, or a file it names that is not there."""


class ServiceSettings(BaseSettings):
    """Base of every service's config; precedence: arguments > environment > file."""

    # Path fields that, when set, must name a readable file for the service to start.
    required_files: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from ``path`` (TOML) if given, the environment, and ``overrides``."""
    where = f"config {path}" if path is not None else f"{cls.__name__} settings"
    try:
        settings = cls(**overrides) if path is None else _from_file(cls, path, overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "value"
        raise ConfigError(f"{where}: {key}: {first['msg']}") from None
    _check_required_files(settings, where)
    return settings


def _from_file(cls: type[S], path: Path, overrides: dict[str, Any]) -> S:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        written = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    bound = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": path}})
    settings: S = bound(**overrides)
    anchored = {
        name: path.parent.absolute() / value
        for name, value in written.items()
        if isinstance(value, str)
        and isinstance(getattr(settings, name, None), Path)
        and str(getattr(settings, name)) == value  # not replaced by the environment
        and not Path(value).is_absolute()
    }
    return settings.model_copy(update=anchored) if anchored else settings


def _check_required_files(settings: ServiceSettings, where: str) -> None:
    for name in settings.required_files:
        value = getattr(settings, name)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{where}: {name} = {value}: no such file")


def default_state_dir(service: str) -> Callable[[], Path]:
    """A ``default_factory`` for a service's state folder: systemd's ``StateDirectory=``
    (exported as ``STATE_DIRECTORY``) where set, else ``$XDG_STATE_HOME/edgeserve/<service>``."""

    def state_dir() -> Path:
        if state := os.environ.get("STATE_DIRECTORY"):
            return Path(state.split(":")[0])
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(xdg) / "edgeserve" / service

    return state_dir
