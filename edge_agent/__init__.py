"""The device daemon: serves quantized models locally, with no network at all.

It keeps verified models in an active/previous slot store, runs them with the shared
runtimes (ONNX Runtime or TFLite, chosen by the artifact's format), routes unsure answers
to the cloud, takes signed updates over MQTT, answers the Open Inference Protocol v2 on
loopback or a unix socket, and caches results. It imports the shared ``edgeserve``
package and never another tier, torch, or any GPU package, so a small ARM device can
install it.
"""

from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore

__all__ = ["AgentConfig", "AgentCore"]
