"""Optional parts of an install: a feature whose extra is missing says so in one line.

The edge install is lean on purpose: ONNX Runtime (``cpu``/``gpu``), gRPC escalation
(``escalation``), the fleet's MQTT client (``fleet``) and TFLite (``tflite``) are extras,
imported only when a model or a setting asks for them. ``require`` turns the import
failure into ``MissingExtra``, which names the setting, the missing module and the
``pip install`` that fixes it; the CLI prints it as one line, without a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeserve.wire.errors import InternalError


class MissingExtra(InternalError):
    """A configured feature needs a package that this install does not have."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise ``MissingExtra`` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{feature} needs the '{extra}' extra, which is not installed ({exc}): "
            f"pip install 'edgeserve[{extra}]'"
        ) from exc


__all__ = ["MissingExtra", "require"]
