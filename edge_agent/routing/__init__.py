"""The router's parts that need no I/O: the live rate controller and the request scores."""

from edge_agent.routing.rate import RateController
from edge_agent.routing.scoring import BankShelf, Decision, decide, target_rate

__all__ = ["BankShelf", "Decision", "RateController", "decide", "target_rate"]
