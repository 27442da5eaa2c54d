"""Run the KServe SDK's OIP v2 clients against a gateway and print what they got, as JSON.

A separate interpreter because the KServe SDK and tritonclient both register the
``inference.*`` protobuf messages in protobuf's default pool, so the two cannot be
imported into one process (the test suite imports tritonclient).
"""

import asyncio
import io
import json
import sys

import kserve
import numpy as np


async def main(http_url: str, grpc_url: str, key: str, model: str) -> dict:
    batch = np.load(io.BytesIO(sys.stdin.buffer.read()))
    tensor = kserve.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=False)
    request = kserve.InferRequest(model_name=model, infer_inputs=[tensor])
    rest = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    try:
        live = await rest.is_server_live(http_url)
        rest_reply = await rest.infer(
            http_url, request, model_name=model, headers={"Authorization": f"Bearer {key}"}
        )
    finally:
        await rest.close()
    grpc = kserve.InferenceGRPCClient(grpc_url)
    try:
        grpc_reply = await grpc.infer(request, headers=[("authorization", f"Bearer {key}")])
    finally:
        await grpc.close()
    return {
        "live": live,
        "rest": rest_reply.outputs[0].as_numpy().reshape(len(batch), -1).argmax(1).tolist(),
        "grpc": grpc_reply.outputs[0].as_numpy().reshape(len(batch), -1).argmax(1).tolist(),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
