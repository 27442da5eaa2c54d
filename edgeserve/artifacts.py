"""Where the committed reference artifacts are: the embedded default every tier starts on.

The files belong to the model pipeline (``models/artifacts``, written by ``models.build``
and shipped in the wheel as that package's data). The agent seeds its first model from
them, the gateway seeds its repository, and the demo, benchmarks and tests read them; they
find them here, by package resource, so none of them imports the pipeline's code.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

ARTIFACTS_PACKAGE = "models"


def packaged_artifacts() -> Path:
    """The folder of committed artifacts (model files, cards, the digits splits)."""
    return Path(str(files(ARTIFACTS_PACKAGE).joinpath("artifacts")))
