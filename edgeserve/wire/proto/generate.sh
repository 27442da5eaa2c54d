#!/usr/bin/env bash
# Regenerate the Python stubs of grpc_service.proto (run from anywhere, inside the venv).
#
# Three things here are deliberate:
# - protoc runs with -I at the repository root, so the proto is known as
#   edgeserve/wire/proto/grpc_service.proto and the _pb2_grpc.py import line comes out as
#   `from edgeserve.wire.proto import grpc_service_pb2` with no sed needed.
# - The descriptors go into a private DescriptorPool, not protobuf's default one: the
#   messages share full names (inference.ModelInferRequest, ...) with tritonclient's
#   service_pb2, and one default pool refuses the second file ("duplicate symbol"). With
#   a private pool both can live in one process (our tests, a gateway that also uses
#   tritonclient). The wire format does not depend on the pool.
# - grpcio-tools must be the version pinned in pyproject.toml (dev extra): the generated
#   code requires protobuf >= the protobuf it was built with, and tritonclient[grpc] caps
#   protobuf below 7, which rules out grpcio-tools >= 1.82.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$root"
out=edgeserve/wire/proto
want="$(grep -oP '"grpcio-tools==\K[0-9.]+' pyproject.toml)"
have="$(python -c 'from importlib.metadata import version; print(version("grpcio-tools"))')"
if [[ "$have" != "$want" ]]; then
    echo "generate.sh: grpcio-tools $have is installed but pyproject.toml pins $want" >&2
    exit 1
fi
python -m grpc_tools.protoc -I. \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    "$out/grpc_service.proto"

pb2="$out/grpc_service_pb2.py"
default_pool='DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile('
private_pool='DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile('
if [[ "$(grep -cF "$default_pool" "$pb2")" != 1 ]]; then
    echo "generate.sh: $pb2 no longer has one '$default_pool' line; update this script" >&2
    exit 1
fi
sed -i "s/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/$private_pool/" "$pb2"

python - <<'PY'
from edgeserve.wire.proto import grpc_service_pb2, grpc_service_pb2_grpc  # noqa: F401
from google.protobuf import descriptor_pool

assert grpc_service_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
print("regenerated", grpc_service_pb2.DESCRIPTOR.name)
PY
