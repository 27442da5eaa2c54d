"""Test utilities that ship with edgeserve, for our own tests and for anyone deploying it.

``FaultProxy`` is a loopback TCP proxy whose faults (added latency, a stalled link, TCP
resets, a connection cut after N bytes) can be switched while connections are open, so
tests can show how the edge agent behaves on a flaky link to the cloud with real
sockets and real gRPC, not mocks. Nothing here is imported by the services themselves.
"""

from edgeserve.testing.fault_proxy import Fault, FaultMode, FaultProxy, ProxyStats

__all__ = ["Fault", "FaultMode", "FaultProxy", "ProxyStats"]
