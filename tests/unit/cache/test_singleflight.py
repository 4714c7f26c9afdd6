"""Single flight: one leader per key, followers that join only a flight still under
way, and waiters woken by every piece, by the end and by a failure."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache.entry import Entry
from gateway.cache.singleflight import Flight, FlightFailed, Flights


def entry(text: str = "hello") -> Entry:
    return Entry(False, b'{"id":"x-1","text":"%s"}' % text.encode(), "x-1", None)


async def pending(task: asyncio.Task[object]) -> bool:
    """True when ``task`` is still waiting after the loop had every chance to run it."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


def wait_task(flight: Flight, seen: int) -> asyncio.Task[object]:
    return asyncio.create_task(flight.wait(seen))


def result_task(flight: Flight) -> asyncio.Task[object]:
    return asyncio.create_task(flight.result())


def test_followers_join_the_flight_under_way() -> None:
    flights = Flights()
    assert flights.join("k") is None  # nobody leads yet
    flight = flights.lead("k")
    assert len(flights) == 1 and flights.under_way() == [flight]
    assert flights.join("k") is flight
    assert flights.join("k") is flight
    assert flight.followers == 2
    assert flights.join("other") is None
    flight.leave()
    assert flight.followers == 1


def test_only_a_request_capped_alike_follows() -> None:
    """The leader's answer is the engine's under the cap the gateway wrote for it: a
    request capped otherwise (a limit changed, a fail-open moment) may not take it
    (cut by a cap it does not have, or longer than its own), and leads instead."""
    flights = Flights()
    flight = flights.lead("k", 16)
    assert flight.cap == 16
    assert flights.join("k") is None and flights.join("k", 8) is None
    assert flights.join("k", 16) is flight
    uncapped = flights.lead("u")
    assert flights.join("u", 16) is None and flights.join("u") is uncapped


def test_a_landed_flight_is_forgotten() -> None:
    flights = Flights()
    flight = flights.lead("k")
    flight.finish(entry())
    flights.land("k", flight)
    assert len(flights) == 0
    assert flights.join("k") is None


def test_landing_an_old_flight_keeps_the_new_one() -> None:
    flights = Flights()
    old = flights.lead("k")
    new = flights.lead("k")
    flights.land("k", old)
    assert flights.under_way() == [new]
    assert flights.join("k") is new


@pytest.mark.parametrize("ending", ["finish", "fail"])
def test_a_done_flight_takes_no_followers(ending: str) -> None:
    flights = Flights()
    flight = flights.lead("k")
    if ending == "finish":
        flight.finish(entry())
    else:
        flight.fail()
    assert flight.done
    assert flights.join("k") is None  # not landed yet, but over
    assert flight.followers == 0


async def test_wait_wakes_on_each_published_batch() -> None:
    flight = Flight()
    waiter = wait_task(flight, 0)
    assert await pending(waiter)
    flight.publish(b"")  # nothing new: keeps waiting
    assert await pending(waiter)
    flight.publish(b"data: 1\n\n")
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(flight.wait(0), 1)  # more than 0 batches: returns at once
    second = wait_task(flight, 1)
    assert await pending(second)
    flight.publish(b"data: 2\n\ndata: 3\n\n")
    await asyncio.wait_for(second, 1)
    assert flight.batches == [b"data: 1\n\n", b"data: 2\n\ndata: 3\n\n"]


@pytest.mark.parametrize("ending", ["finish", "fail"])
async def test_wait_wakes_when_the_flight_ends(ending: str) -> None:
    flight = Flight()
    waiters = [wait_task(flight, 0), wait_task(flight, 0)]
    assert await pending(waiters[0])
    if ending == "finish":
        flight.finish(entry())
    else:
        flight.fail()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    await asyncio.wait_for(flight.wait(5), 1)  # over: nothing more will come


async def test_result_is_the_leaders_entry() -> None:
    flight = Flight()
    waiter = result_task(flight)
    flight.publish(b"data: 1\n\n")
    assert await pending(waiter)  # batches are not the result
    answer = entry()
    flight.finish(answer)
    assert await asyncio.wait_for(waiter, 1) is answer
    assert await flight.result() is answer


async def test_result_raises_when_the_leader_fails() -> None:
    flight = Flight()
    waiter = result_task(flight)
    assert await pending(waiter)
    flight.fail()
    with pytest.raises(FlightFailed):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(FlightFailed):
        await flight.result()


async def test_a_failure_after_the_answer_changes_nothing() -> None:
    flight = Flight()
    answer = entry()
    flight.finish(answer)
    flight.fail()
    assert not flight.failed
    assert await flight.result() is answer
