"""The reference-model pipeline: trains, exports, quantizes and converts the served models.

Everything here is deterministic and offline. The digits data set ships with scikit-learn,
the small edge MLP and the more accurate cloud CNN are trained on CPU with fixed seeds, and
each is exported to ONNX (the edge model also to int8 ONNX and to TFLite, written without
TensorFlow). Every artifact lands in ``artifacts/`` next to a model card
(:class:`~edgeserve.wire.model_card.ModelCard`) that pins its bytes, so a rebuild from the
same seed reproduces the committed files exactly. Only :mod:`models.data`'s
``load_split`` is usable without the ``models`` extra. The artifacts are found through
:func:`edgeserve.artifacts.packaged_artifacts`, so the tiers that start on them never
import this package's code.
"""
