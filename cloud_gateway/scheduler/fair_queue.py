"""Weighted fair queuing across tenants, within strict priority tiers.

Fairness follows the Virtual Token Counter of Sheng et al., "Fairness in Serving Large
Language Models" (OSDI'24): every tenant has a counter of the service it received,
divided by its weight; ``pop`` serves the backlogged tenant with the lowest counter and
then charges it ``cost / weight``. A tenant that was idle is lifted, when it becomes
backlogged again, to the lowest counter among the tenants still backlogged, so idle time
never banks credit that it could later spend starving the others; and since someone is
always served while anything is queued, the queue is work-conserving.

Priorities follow the Open Inference Protocol / Triton convention: 1 is the highest
level, larger numbers are lower, and 0 means "the default level". A higher tier is
always served before a lower one; fairness applies inside a tier, which keeps its own
counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Schedulable(Protocol):
    """What the queue needs to know about an entry."""

    @property
    def tenant(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def priority(self) -> int: ...

    @property
    def cost(self) -> float: ...


T = TypeVar("T", bound=Schedulable)


@dataclass(eq=False)
class _Slot(Generic[T]):
    entry: T
    level: int
    seq: int
    live: bool = True


@dataclass
class _Tier(Generic[T]):
    """One priority level: per-tenant FIFOs of the backlogged tenants, and all counters."""

    queues: dict[str, deque[_Slot[T]]] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    # The counter of the last tenant to leave an empty tier: what a newcomer is lifted to
    # when nobody is backlogged to take a minimum over.
    floor: float = 0.0

    def join(self, tenant: str) -> None:
        if tenant in self.queues:
            return
        baseline = min((self.counters[t] for t in self.queues), default=self.floor)
        self.counters[tenant] = max(self.counters.get(tenant, baseline), baseline)
        self.queues[tenant] = deque()
        self.live[tenant] = 0

    def best(self, accept: Callable[[T], bool] | None) -> _Slot[T] | None:
        """The head of the lowest-counter tenant; ties go to whichever head came first."""
        chosen: _Slot[T] | None = None
        chosen_key = (0.0, 0)
        for tenant, queue in self.queues.items():
            head = queue[0]
            key = (self.counters[tenant], head.seq)
            if (chosen is None or key < chosen_key) and (accept is None or accept(head.entry)):
                chosen, chosen_key = head, key
        return chosen

    def discard(self, slot: _Slot[T]) -> None:
        """Drop a slot that was served or removed, and the tenant too if that emptied it."""
        tenant = slot.entry.tenant
        slot.live = False
        self.live[tenant] -= 1
        queue = self.queues[tenant]
        # Removed slots stay in their deque as tombstones; heads are always kept live.
        while queue and not queue[0].live:
            queue.popleft()
        if self.live[tenant] == 0:
            self._leave(tenant)

    def _leave(self, tenant: str) -> None:
        del self.queues[tenant]
        del self.live[tenant]
        if self.queues:
            return
        self.floor = max(self.floor, self.counters[tenant])
        # With nobody backlogged, any counter at or below the floor would be lifted to it
        # anyway, so forgetting it keeps memory bounded by the tenants still in debt.
        self.counters = {t: c for t, c in self.counters.items() if c > self.floor}


class FairQueue(Generic[T]):
    """A queue of entries ordered by priority tier, then by weighted fairness across tenants.

    ``pop`` costs O(tiers + backlogged tenants); ``push`` and ``remove`` O(backlogged
    tenants) at worst. Entries are tracked by identity, so equal entries stay distinct.
    """

    def __init__(self, default_priority_level: int = 1) -> None:
        if default_priority_level < 1:
            raise ValueError(f"default_priority_level must be >= 1, got {default_priority_level}")
        self._default_level = default_priority_level
        self._tiers: dict[int, _Tier[T]] = {}
        self._slots: dict[int, _Slot[T]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, entry: object) -> bool:
        return id(entry) in self._slots

    def push(self, entry: T) -> None:
        if entry.weight <= 0:
            raise ValueError(f"weight must be positive, got {entry.weight}")
        if entry.priority < 0:
            raise ValueError(f"priority must be >= 0, got {entry.priority}")
        if id(entry) in self._slots:
            raise ValueError("entry is already queued")
        level = self.level_of(entry.priority)
        tier = self._tiers.setdefault(level, _Tier())
        tier.join(entry.tenant)
        slot = _Slot(entry, level, self._seq)
        self._seq += 1
        tier.queues[entry.tenant].append(slot)
        tier.live[entry.tenant] += 1
        self._slots[id(entry)] = slot

    def pop(self, accept: Callable[[T], bool] | None = None) -> T | None:
        """Serve the next entry, or None when empty.

        With ``accept``, serve the best entry whose tenant's head passes it, searching
        lower tiers too: a batcher filling spare room in a batch uses this to take only
        entries that fit, without reordering any tenant's own requests.
        """
        for level in sorted(self._tiers):
            tier = self._tiers[level]
            slot = tier.best(accept)
            if slot is not None:
                entry = slot.entry
                tier.counters[entry.tenant] += entry.cost / entry.weight
                self._drop(slot)
                return entry
        return None

    def remove(self, entry: T) -> bool:
        """Take out an entry that will not be served (cancelled, expired); False if absent."""
        slot = self._slots.get(id(entry))
        if slot is None:
            return False
        self._drop(slot)
        return True

    def depth_by_tenant(self) -> dict[str, int]:
        depth: dict[str, int] = {}
        for tier in self._tiers.values():
            for tenant, count in tier.live.items():
                depth[tenant] = depth.get(tenant, 0) + count
        return depth

    def counter(self, tenant: str, priority: int = 0) -> float:
        """The tenant's virtual counter in the tier of ``priority`` (for metrics and tests)."""
        tier = self._tiers.get(self.level_of(priority))
        if tier is None:
            return 0.0
        return tier.counters.get(tenant, tier.floor)

    def level_of(self, priority: int) -> int:
        return priority if priority > 0 else self._default_level

    def _drop(self, slot: _Slot[T]) -> None:
        del self._slots[id(slot.entry)]
        tier = self._tiers[slot.level]
        tier.discard(slot)
        if not tier.queues and not tier.counters:
            # Priority is caller-chosen; empty tiers must not accumulate without bound.
            del self._tiers[slot.level]
