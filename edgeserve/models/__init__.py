"""The reference-model pipeline: trains, exports, quantizes and converts the served models.

Everything here is deterministic and offline. The digits data set ships with scikit-learn,
the small edge MLP and the more accurate cloud CNN are trained on CPU with fixed seeds, and
each is exported to ONNX (the edge model also to int8 ONNX and to TFLite, written without
TensorFlow). Every artifact lands in ``artifacts/`` next to a model card
(:class:`~edgeserve.wire.model_card.ModelCard`) that pins its bytes, so a rebuild from the
same seed reproduces the committed files exactly.
Only :mod:`edgeserve.models.data`'s ``load_split`` is usable without the ``models`` extra.
"""

from pathlib import Path

__all__ = ["packaged_artifacts"]


def packaged_artifacts() -> Path:
    """The committed reference artifacts shipped inside the package: the embedded default
    that the agent seeds from, the gateway's repository is seeded from, and the demo,
    benchmarks and tests read."""
    return Path(__file__).resolve().parent / "artifacts"
