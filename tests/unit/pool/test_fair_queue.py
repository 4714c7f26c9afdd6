"""The order of admission given the waiters: tier first, keys in turn within a tier,
each key's requests in arrival order."""

from __future__ import annotations

import pytest

from gateway.pool.fair_queue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    return [queue.pop() for _ in range(len(queue))]


def test_an_earlier_tier_goes_first_whenever_it_arrived() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("batch", 10, "low-1")
    queue.push("batch", 10, "low-2")
    queue.push("web", 0, "normal-1")
    queue.push("chat", -10, "high-1")
    assert drain(queue) == ["high-1", "normal-1", "low-1", "low-2"]


def test_keys_of_one_tier_take_turns_whatever_each_sent() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(10):
        queue.push("flood", 0, f"f{n}")
    queue.push("quiet", 0, "q0")
    queue.push("quiet", 0, "q1")
    order = drain(queue)
    assert order[:4] == ["f0", "q0", "f1", "q1"]
    assert order[4:] == [f"f{n}" for n in range(2, 10)]


def test_a_key_arriving_later_waits_for_the_keys_already_in_the_round() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", 0, "a0")
    queue.push("b", 0, "b0")
    queue.push("a", 0, "a1")
    assert queue.pop() == "a0"
    queue.push("c", 0, "c0")
    assert drain(queue) == ["b0", "a1", "c0"]


def test_a_waiter_put_back_keeps_its_turn() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", 0, "a0")
    queue.push("b", 0, "b0")
    first = queue.pop()
    queue.push_front("a", 0, first)
    assert drain(queue) == ["a0", "b0"]


def test_a_waiter_that_gave_up_is_removed_and_its_key_forgotten_when_empty() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("a", 0, "a0")
    queue.push("b", 5, "b0")
    assert queue.remove("a", 0, "a0")
    assert not queue.remove("a", 0, "a0")
    assert not queue.remove("nobody", 3, "x")
    assert len(queue) == 1 and drain(queue) == ["b0"]
    assert not queue
    with pytest.raises(IndexError):
        queue.pop()


def test_a_full_queue_gives_up_the_latest_tiers_heaviest_key_for_an_earlier_tier() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("web", 0, "w0")
    queue.push("batch", 10, "b0")
    queue.push("batch", 10, "b1")
    queue.push("other", 10, "o0")
    assert queue.evict_for("chat", -10) == "b1"  # the newest of the heaviest latest key
    assert len(queue) == 3
    assert drain(queue) == ["w0", "b0", "o0"]


def test_a_full_queue_gives_up_a_flooders_newest_for_a_lighter_key_of_its_tier() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(3):
        queue.push("flood", 0, f"f{n}")
    queue.push("quiet", 0, "q0")
    assert queue.evict_for("quiet", 0) == "f2"  # flood 3 > quiet 1 + 1
    assert queue.evict_for("quiet", 0) is None  # flood 2, quiet would be 2: even
    assert queue.evict_for("flood", 0) is None  # a key never displaces an equal
    assert queue.evict_for("late", 10) is None  # nothing waits later than tier 10
    assert drain(queue) == ["f0", "q0", "f1"]
