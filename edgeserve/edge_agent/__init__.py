"""The device daemon: serves quantized models locally, with no network at all.

It keeps verified models in an active/previous slot store, runs them with ONNX Runtime
or TFLite (chosen by the artifact's format), answers the Open Inference Protocol v2 on
loopback or a unix socket, and caches results. It imports ``wire`` and never the cloud
gateway, torch, or any GPU package, so a small ARM device can install it.
"""

from edgeserve.edge_agent.config import AgentConfig
from edgeserve.edge_agent.core import AgentCore

__all__ = ["AgentConfig", "AgentCore"]
