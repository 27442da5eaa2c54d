"""The cloud gateway's scheduling layer: who runs next, with whom, and who is refused.

Transport-free and pure asyncio over numpy arrays: ``TenantLimiter`` admits or refuses a
tenant's request (token-bucket rate and in-flight cap, both as ``RateLimited``),
``FairQueue`` orders admitted requests by priority tier and then by weighted fairness
across tenants, and ``DynamicBatcher`` drains that queue into batches for one model and
runs them on an executor. The REST and gRPC front doors and the model runtimes sit on
either side and are not imported here.
"""

from cloud_gateway.scheduler.batcher import DynamicBatcher, OnBatch
from cloud_gateway.scheduler.config import BatchingConfig, BatchStats
from cloud_gateway.scheduler.fair_queue import FairQueue, Schedulable
from cloud_gateway.scheduler.stacking import Execute, Tensors
from cloud_gateway.scheduler.token_bucket import (
    RateLimit,
    TenantLimiter,
    TokenBucket,
    TooManyInFlight,
)

__all__ = [
    "BatchStats",
    "BatchingConfig",
    "DynamicBatcher",
    "Execute",
    "FairQueue",
    "OnBatch",
    "RateLimit",
    "Schedulable",
    "TenantLimiter",
    "Tensors",
    "TokenBucket",
    "TooManyInFlight",
]
