"""Typed service configuration: defaults, then a TOML file, then ``EDGESERVE_*`` variables.

Each service declares one ``ServiceSettings`` subclass and builds it once in its
``main()`` with ``load_settings``; nothing reads configuration at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from edgeserve.wire.errors import InvalidInput

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """Base of every service's config; precedence: arguments > environment > file."""

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
    if path is None:
        return cls(**overrides)
    if not path.is_file():
        raise InvalidInput(f"config file {path} does not exist")
    bound = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": path}})
    settings: S = bound(**overrides)
    return settings


def default_state_dir(service: str) -> Callable[[], Path]:
    """A ``default_factory`` for a service's state folder: systemd's ``StateDirectory=``
    (exported as ``STATE_DIRECTORY``) where set, else ``$XDG_STATE_HOME/edgeserve/<service>``."""

    def state_dir() -> Path:
        if state := os.environ.get("STATE_DIRECTORY"):
            return Path(state.split(":")[0])
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(xdg) / "edgeserve" / service

    return state_dir
