"""Typed service configuration: defaults, then a TOML file, then ``EDGESERVE_*`` variables.

Each service declares one ``ServiceSettings`` subclass and builds it once in its
``main()`` with ``load_settings``; nothing reads configuration at import time.
"""

from __future__ import annotations

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
