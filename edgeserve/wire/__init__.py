"""The contracts every tier shares, and nothing else.

Open Inference Protocol v2 tensors and their REST encoding, the model card that pins an
artifact's bytes and signature, and the one exception tree that every front door maps
onto its protocol's errors. The edge agent, the cloud gateway, the sync service and the
tests all speak through these types, so a change of contract happens in one place.
"""

from edgeserve.wire.errors import EdgeServeError, ErrorCode
from edgeserve.wire.model_card import ModelCard, TensorSpec
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor, RequestedOutput

__all__ = [
    "EdgeServeError",
    "ErrorCode",
    "InferRequest",
    "InferResponse",
    "InferTensor",
    "ModelCard",
    "RequestedOutput",
    "TensorSpec",
]
