"""edgeserve: edge-cloud hierarchical model serving; this package is what the tiers share.

Small quantized models answer on devices (the top-level ``edge_agent`` package), hard
requests climb to a GPU cloud tier (``cloud_gateway``), a fleet service (``sync``) pushes
signed model updates and brings telemetry home, and ``models`` is the reference-model
pipeline that produces the artifacts they serve. Here lives what two or more of them need
(``wire`` contracts, ``runtimes``, ``security``, ``broker`` setup, serving and process
helpers) and the tooling around them (``cli``, ``bench``, ``eval``, ``testing``). The
shared core never imports a tier; only the tooling does.
"""

__version__ = "0.2.0"  # agents from 0.2.0 apply tensor-delta format 2
