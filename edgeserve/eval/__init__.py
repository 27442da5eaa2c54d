"""Evaluations that run the real system: processes on loopback, the held-out test split.

``stack`` starts a gateway and an edge agent wired together over mTLS, the way a device
and the cloud meet in production; ``cascade`` drives the test digits through them and
measures what the router buys: accuracy against escalation rate and latency.
"""
