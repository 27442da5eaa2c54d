"""Weighted fair queuing: service follows weights, idling banks nothing, tiers are strict."""

from collections import Counter
from dataclasses import dataclass

import pytest

from cloud_gateway.scheduler import FairQueue


@dataclass
class Item:
    tenant: str
    weight: float = 1.0
    priority: int = 0
    cost: float = 1.0


def fill(queue: FairQueue[Item], tenant: str, count: int, **fields) -> list[Item]:
    items = [Item(tenant, **fields) for _ in range(count)]
    for item in items:
        queue.push(item)
    return items


def pop_tenants(queue: FairQueue[Item], count: int) -> list[str]:
    popped = [queue.pop() for _ in range(count)]
    return [item.tenant for item in popped if item is not None]


def test_an_empty_queue_pops_none():
    assert FairQueue[Item]().pop() is None


def test_one_tenant_is_served_in_arrival_order():
    queue: FairQueue[Item] = FairQueue()
    items = fill(queue, "a", 5)

    assert [queue.pop() for _ in range(5)] == items


def test_service_under_backlog_follows_weights():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "heavy", 1000, weight=3.0)
    fill(queue, "light", 1000, weight=1.0)

    shares = Counter(pop_tenants(queue, 400))

    assert shares["heavy"] == pytest.approx(300, abs=2)
    assert shares["light"] == pytest.approx(100, abs=2)


def test_service_is_shared_by_cost_not_by_request_count():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "big", 100, cost=4.0)
    fill(queue, "small", 400, cost=1.0)

    served = Counter(pop_tenants(queue, 250))

    assert served["big"] * 4 == pytest.approx(served["small"], abs=8)


def test_a_newly_active_tenant_gets_no_banked_credit_and_is_not_starved():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "busy", 1000)
    pop_tenants(queue, 100)  # busy has used 100 units while newcomer was idle

    fill(queue, "newcomer", 100)
    shares = Counter(pop_tenants(queue, 40))

    # Banked credit would give the newcomer all 40; starvation would give it none.
    assert shares["newcomer"] == pytest.approx(20, abs=1)
    assert queue.counter("newcomer") == pytest.approx(queue.counter("busy"), abs=1)


def test_a_tenant_returning_after_an_idle_spell_is_lifted_to_the_backlog_minimum():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "a", 1)
    queue.pop()  # a has been served once and now idles
    fill(queue, "b", 50)
    pop_tenants(queue, 20)

    fill(queue, "a", 10)

    assert queue.counter("a") == pytest.approx(queue.counter("b"))


def test_a_tenant_idle_while_another_drained_the_queue_banks_no_credit():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "a", 30)
    pop_tenants(queue, 30)  # the whole queue drains while b idles

    fill(queue, "a", 10)
    fill(queue, "b", 10)
    first_ten = Counter(pop_tenants(queue, 10))

    # Credit banked while idle would hand b all ten.
    assert first_ten["b"] == pytest.approx(5, abs=1)


def test_debt_kept_across_an_empty_queue_counts_from_where_service_stopped():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "a", 60)
    fill(queue, "b", 1, cost=100.0)
    pop_tenants(queue, 61)  # b overspends by 100 units; a then drains the queue at 60

    fill(queue, "c", 200)
    fill(queue, "b", 200)
    served = Counter(pop_tenants(queue, 100))

    # b owes 40 units relative to the 60 where service stopped, not 100 relative to zero.
    assert served["b"] == pytest.approx(30, abs=1)


def test_a_higher_priority_tier_is_always_served_first():
    queue: FairQueue[Item] = FairQueue(default_priority_level=2)
    fill(queue, "low", 3, priority=3)
    fill(queue, "default", 3, priority=0)
    fill(queue, "urgent", 3, priority=1)

    assert pop_tenants(queue, 9) == ["urgent"] * 3 + ["default"] * 3 + ["low"] * 3


def test_priority_zero_maps_to_the_configured_default_level():
    queue: FairQueue[Item] = FairQueue(default_priority_level=2)
    default, explicit = Item("a", priority=0), Item("b", priority=2)
    queue.push(default)
    queue.push(explicit)

    assert queue.level_of(0) == 2
    # Same tier, equal counters: arrival order decides, as it would inside one level.
    assert [queue.pop(), queue.pop()] == [default, explicit]


def test_fairness_applies_within_a_tier_without_crossing_tiers():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "a", 10, priority=2)
    fill(queue, "b", 10, priority=2)
    fill(queue, "a", 4, priority=1)

    order = pop_tenants(queue, 8)

    assert order[:4] == ["a"] * 4
    assert Counter(order[4:]) == {"a": 2, "b": 2}


def test_removed_entries_are_never_served():
    queue: FairQueue[Item] = FairQueue()
    keep, drop = Item("a"), Item("a")
    queue.push(keep)
    queue.push(drop)

    assert queue.remove(drop) is True
    assert queue.remove(drop) is False
    assert len(queue) == 1
    assert [queue.pop(), queue.pop()] == [keep, None]


def test_equal_entries_are_tracked_by_identity():
    queue: FairQueue[Item] = FairQueue()
    first, twin = Item("a"), Item("a")
    queue.push(first)
    queue.push(twin)

    queue.remove(twin)

    assert queue.pop() is first


def test_removing_a_tenants_last_entry_takes_it_out_of_the_backlog():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "b", 5)
    gone = fill(queue, "a", 2)
    for item in gone:
        queue.remove(item)

    assert queue.depth_by_tenant() == {"b": 5}
    assert pop_tenants(queue, 5) == ["b"] * 5


def test_depth_by_tenant_counts_every_tier():
    queue: FairQueue[Item] = FairQueue()
    fill(queue, "a", 2, priority=1)
    fill(queue, "a", 3, priority=4)
    fill(queue, "b", 1)

    assert queue.depth_by_tenant() == {"a": 5, "b": 1}
    assert len(queue) == 6


def test_pop_with_accept_skips_heads_it_rejects_but_keeps_each_tenants_order():
    queue: FairQueue[Item] = FairQueue()
    big = Item("a", cost=5.0)
    queue.push(big)
    small_a = Item("a", cost=1.0)
    queue.push(small_a)
    small_b = Item("b", cost=1.0)
    queue.push(small_b)

    def fits(item: Item) -> bool:
        return item.cost <= 2

    # a's head does not fit and a's later item must not overtake it, so b is served.
    assert queue.pop(fits) is small_b
    assert queue.pop(fits) is None
    assert queue.pop() is big


def test_pushing_the_same_entry_twice_is_refused():
    queue: FairQueue[Item] = FairQueue()
    item = Item("a")
    queue.push(item)

    with pytest.raises(ValueError, match="already queued"):
        queue.push(item)


@pytest.mark.parametrize("bad", [Item("a", weight=0.0), Item("a", priority=-1)])
def test_nonpositive_weights_and_negative_priorities_are_refused(bad):
    with pytest.raises(ValueError):
        FairQueue[Item]().push(bad)
