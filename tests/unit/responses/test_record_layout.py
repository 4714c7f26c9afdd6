"""A stored record is laid out in slices so that a large one is decoded a slice per
turn of the event loop: orjson holds the GIL, so decoding an 8 MiB record in one call,
on the loop or in a thread, stalled every other client of the worker for 30-90 ms.
Records of the earlier layout (one JSON document) are still read."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

import orjson

from gateway.protocol.exact_json import is_beyond_64_bits
from gateway.responses.record_layout import SLICE_BYTES, SLICE_ITEMS, encoded_in_slices
from gateway.responses.store import StoredResponse

ITEMS = 3 * SLICE_ITEMS + 5


def _record(count: int) -> StoredResponse:
    items = [{"role": "user", "content": f"say {n}", "n": n} for n in range(count)]
    ids = [f"msg_{n}" for n in range(count)]
    output = [{"id": "msg_out", "type": "message", "content": []}]
    return StoredResponse("resp_1", "alice", {"id": "resp_1", "output": output}, items, ids)


def test_the_engines_array_is_what_orjson_writes_and_cut_between_slices() -> None:
    items = _record(ITEMS).input_items
    encoded, cuts = encoded_in_slices(items)
    assert encoded == orjson.dumps(items)  # the engine gets the same bytes
    assert len(cuts) == 3 and all(encoded[cut : cut + 1] == b"," for cut in cuts)
    assert encoded_in_slices(items[:3]) == (orjson.dumps(items[:3]), [])
    assert encoded_in_slices([]) == (b"[]", [])


async def test_a_record_of_few_large_items_is_sliced_by_size() -> None:
    """Slices were cut by item count only: 40 items of 100 KiB (well under 256) were one
    4 MiB slice, decoded in one call as before the slices (30-90 ms at 8 MiB)."""
    text = "x" * (100 << 10)
    items: list[Any] = [{"role": "user", "content": text, "n": n} for n in range(40)]
    items.append({"role": "user", "content": "y" * (SLICE_BYTES * 2)})  # one item alone
    items.append({"role": "user", "content": "last"})
    encoded, cuts = encoded_in_slices(items)
    assert encoded == orjson.dumps(items)  # the engine gets the same bytes
    assert all(encoded[cut : cut + 1] == b"," for cut in cuts)
    bounds = [0, *cuts, len(encoded) - 1]
    sizes = [end - start for start, end in pairwise(bounds)]
    assert len(cuts) >= 16  # unfixed: none
    assert sorted(sizes)[-2] <= SLICE_BYTES  # all but the one large item's
    ids = [f"msg_{n}" for n in range(len(items))]
    record = StoredResponse("resp_1", "alice", {"id": "resp_1", "output": []}, items, ids)
    assert await StoredResponse.decode_in_turns("resp_1", record.encode()) == record
    assert StoredResponse.decode("resp_1", record.encode()) == record


async def test_records_round_trip_in_one_go_and_in_turns() -> None:
    for count in (0, 1, SLICE_ITEMS, ITEMS):
        record = _record(count)
        data = record.encode()
        assert StoredResponse.decode("resp_1", data) == record
        assert await StoredResponse.decode_in_turns("resp_1", data) == record


async def test_a_record_of_the_earlier_layout_is_still_read() -> None:
    record = _record(ITEMS)
    earlier = orjson.dumps(
        {
            "owner": "alice",
            "response": record.response,
            "input": record.input_items,
            "input_ids": record.input_ids,
        }
    )
    assert StoredResponse.decode("resp_1", earlier) == record
    assert await StoredResponse.decode_in_turns("resp_1", earlier) == record


async def test_a_damaged_record_reads_as_absent() -> None:
    data = _record(ITEMS).encode()
    header, _, conversation = data.partition(b"\n")
    fields = orjson.loads(header)
    for slices in ([], [5, 3], [len(conversation) - 1], "x", [1, len(conversation)]):
        damaged = orjson.dumps({**fields, "input_slices": slices}) + b"\n" + conversation
        assert StoredResponse.decode("resp_1", damaged) is None
        assert await StoredResponse.decode_in_turns("resp_1", damaged) is None
    cut = data[:-10]
    assert StoredResponse.decode("resp_1", cut) is None
    assert await StoredResponse.decode_in_turns("resp_1", cut) is None


def test_integers_beyond_64_bits_are_read_exactly_from_any_slice() -> None:
    record = _record(ITEMS)
    record.input_items[-1]["n"] = orjson.Fragment(b"123456789012345678901234567890")
    record.response["big"] = orjson.Fragment(b"98765432109876543210987654321")
    exact = StoredResponse.decode("resp_1", record.encode(), exact=True)
    assert exact is not None
    read = StoredResponse.decode("resp_1", record.encode())
    assert read is not None and type(read.input_items[-1]["n"]) is float  # orjson's reading
    last: Any = exact.input_items[-1]["n"]
    assert is_beyond_64_bits(last) and orjson.dumps(last) == b"123456789012345678901234567890"
    assert orjson.dumps(exact.response["big"]) == b"98765432109876543210987654321"


async def test_the_event_loop_turns_between_slices() -> None:
    data = _record(ITEMS).encode()
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = turns
    record = await StoredResponse.decode_in_turns("resp_1", data)
    during = turns - start
    done = True
    await ticking
    assert record is not None and len(record.input_items) == ITEMS
    assert during >= 4  # one turn per slice: unfixed, none (decoded in one call)


async def test_the_exact_reading_turns_the_event_loop_between_slices() -> None:
    """Text with "e+" and a run of 19 digits makes every write of a record show a float
    of 1e16 or more, so any tenant can have its record read again exactly at every
    follow-up and retrieval: read whole by the standard library's parser, an 8 MiB
    record held the loop ~190 ms. It is read a slice per turn now, and stays exact."""
    record = _record(ITEMS)
    record.input_items[-1]["n"] = orjson.Fragment(b"123456789012345678901234567890")
    data = record.encode()
    read = await StoredResponse.decode_in_turns("resp_1", data)
    assert read is not None
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = turns
    exact = await read.exact()
    during = turns - start
    done = True
    await ticking
    assert orjson.dumps(exact.input_items[-1]["n"]) == b"123456789012345678901234567890"
    assert exact.input_items[:-1] == read.input_items[:-1]
    assert during >= 4  # one turn per slice: unfixed, none (read in one call)
