"""The cloud tier: one inference core behind OIP v2 REST and gRPC front doors.

Apps (with an API key) and devices (with their mTLS certificate) send the requests the
edge could not answer confidently. The core authenticates the tenant, applies its token
bucket, queues the request fairly against other tenants, and hands it to a per-model
dynamic batcher in front of the backends (ONNX Runtime on CPU/CUDA/TensorRT, torch,
TensorRT). The model repository loads and unloads versions at runtime under a memory
budget. It imports the shared ``edgeserve`` package and never another tier.
"""
