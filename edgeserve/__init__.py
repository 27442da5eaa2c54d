"""edgeserve: edge-cloud hierarchical model serving.

Small quantized models answer on devices (``edge_agent``), hard requests climb to a GPU
cloud tier (``cloud_gateway``), and a fleet service (``sync``) pushes signed model
updates and brings telemetry home. ``wire`` holds the contracts every tier shares and
``models`` the reference-model pipeline that produces the artifacts they serve.
"""

__version__ = "0.1.0"
