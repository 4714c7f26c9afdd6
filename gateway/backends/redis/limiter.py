"""The rate limiter in Redis: the Lua script ``limiter.lua``, called in batches.

Every decision is made inside Redis by the script, atomically, so any number
of gateway replicas enforce one limit together; the script reads the time from
Redis, so replicas whose clocks disagree still agree.

Admissions and settlements made in the same event-loop turn go to Redis as one
script call (at most :data:`MAX_BATCH` operations) at the end of that turn, in
the same socket write as the turn's cache lookups and stores (the client's
:meth:`~gateway.backends.redis.resp.RespClient.before_flush`): one write, one
round trip, one reply to parse, however many requests are waiting.
Each operation in a batch is still decided on its own, in order, exactly as if
sent alone. A settlement is never waited for, but it leaves in the turn that
makes it, while the client is still reading its answer: Redis applies it before
any admission this gateway sends later (a client's next request finds its
concurrency slot free), and its cost is paid before that admission arrives
rather than in front of it. (Holding settlements back to ride with the next
admission saved a write but put their script time on the next request's path:
+45 µs at p50 with one connection, measured with Redis on loopback.)

This runs on every request, so the command is assembled from pieces encoded
once per set of scopes (keys and limits), and Redis answers with one string of
integers rather than an array: together they cut the limiter's own CPU per
request by more than half.

A reply that is not what the batch asked for (not a string of integers, or not one
decision per admission) fails every admission of the batch with
:class:`StoreUnavailable`, as an outage would, and resets the connection, so that no
later reply can reach the wrong caller; a wrong reply never leaves an admission
waiting.

While Redis is unreachable, :attr:`RedisLimiter.fallback` (an in-memory limiter of
this process) is there for ``ratelimit.on_redis_error: local``. An admission whose
caller stopped waiting (the client left) before the decision arrived is undone here,
in its own bucket, once the decision arrives.

An admission whose call failed may still run: a paused Redis (or one slow past the
deadline) runs the script it already read once it resumes, and takes concurrency
slots for requests that were decided locally meanwhile and will never free them there.
And a request admitted in Redis that ends while Redis is unreachable cannot free its
slot then. So those slots are released (``ZREM``, nothing else) once Redis answers
again, and a second time a second later, in case the stale call was still queued
behind the first release (:class:`_Unsettled`); without this they would refuse the
key's requests until their leases expire (``ratelimit.concurrency_lease_s``). "Answers
again" is the next call that succeeds, or a PING made each second while releases wait
(:meth:`RedisLimiter._release_later`): a gateway that gets no more limited requests
still releases them. Their
token reservations stay counted for one window: erring toward the limit, and bounded.
The same goes for a settlement whose script call failed once sent: the call may have
stopped before it (a full Redis fails a call at its first write that needs memory,
an earlier admission's, and runs nothing after it), so its slot is released again
too (``ZREM`` of a request id is harmless if it already ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.backends.redis.limiter_wire import (
    EVAL,
    EVALSHA,
    EncodedScopes,
    encode_scopes,
    integers,
    operation,
    read_decision,
)
from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp_wire import BULK, STATUS, RedisReplyError, bulk
from gateway.errors import StoreUnavailable
from gateway.ratelimit.limits import (
    WINDOW_S,
    Decision,
    LimiterBackend,
    LimitScope,
    ScopesMemo,
)

MAX_BATCH = 128


class _Waiter(NamedTuple):
    """An admission waiting for its decision, and what undoing it would take (a tuple:
    one is made on every request)."""

    future: asyncio.Future[Decision]
    encoded: EncodedScopes
    request_id: str
    prompt: int
    choices: int


@dataclass(slots=True)
class _Batch:
    """Operations waiting to go to Redis in one script call."""

    keys: bytearray
    key_count: int
    args: bytearray
    arg_count: int
    waiters: list[_Waiter | None]  # None for a settlement or renewal
    reply_size: int  # integers the reply must hold: a decision per admission
    frees: list[tuple[str, EncodedScopes]]  # settlements that free concurrency slots


def _empty_batch() -> _Batch:
    return _Batch(bytearray(), 0, bytearray(), 0, [], 0, [])


RELEASE_AGAIN_S = 1.0
"""How long after the first release of failed admissions' slots the second one goes."""
MAX_UNSETTLED = 100_000
"""The most failed admissions remembered for release (oldest forgotten first: their
leases expire on their own)."""


class _Unsettled:
    """Admissions that failed but may have taken concurrency slots in Redis all the
    same, to release once Redis answers again: by request id, with their scopes and
    when their lease would expire anyway (no release is needed after that)."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[EncodedScopes, float]] = {}
        self.again: dict[str, tuple[EncodedScopes, float]] = {}
        self.again_at = 0.0

    def add(self, request_id: str, encoded: EncodedScopes, lease_ends: float) -> None:
        self.first[request_id] = (encoded, lease_ends)
        while len(self.first) > MAX_UNSETTLED:
            del self.first[next(iter(self.first))]

    def due(self, now: float) -> list[tuple[str, EncodedScopes]]:
        """The admissions to release now that Redis answered: the new ones (kept for a
        second release), then those whose second release has come. A second release
        already pending is not put off by newer first ones: they wait for the next."""
        due: list[tuple[str, EncodedScopes]] = []
        if self.again and now >= self.again_at:
            due += [(rid, enc) for rid, (enc, ends) in self.again.items() if ends > now]
            self.again = {}
        if self.first:
            due += [(rid, enc) for rid, (enc, ends) in self.first.items() if ends > now]
            if not self.again:
                self.again_at = now + RELEASE_AGAIN_S
            self.again.update(self.first)
            self.first = {}
            while len(self.again) > MAX_UNSETTLED:
                del self.again[next(iter(self.again))]
        return due


class RedisLimiter:
    """:class:`gateway.ratelimit.limits.LimiterBackend` on a shared Redis."""

    def __init__(
        self, link: RedisLink, prefix: str = "vgate:rl:", window_s: float = WINDOW_S
    ) -> None:
        self._link = link
        self._window = bulk(b"%d" % int(window_s * 1000))
        self._batch = _empty_batch()
        self._scheduled = False
        self._encoded = ScopesMemo(partial(encode_scopes, prefix))
        self._fallback = MemoryLimiter(window_s=window_s)
        self._lease_s = 0.0
        self._unsettled = _Unsettled()
        self._release_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def admit(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        tokens: int,
        lease_s: float,
        wanted: int = 0,
        choices: int = 1,
    ) -> asyncio.Future[Decision]:
        self._link.check()
        future: asyncio.Future[Decision] = self._link.fast.create_future()
        encoded = self._encoded.get(scopes)
        args = operation(
            encoded.admit_head, request_id, tokens, wanted, choices, b"%d" % int(lease_s * 1000)
        )
        waiter = _Waiter(future, encoded, request_id, tokens, choices)
        self._lease_s = lease_s
        self._add(encoded, args + encoded.limits, 7 + 3 * encoded.scopes, waiter)
        return future

    def settle(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        reserved: int,
        actual: int | None,
        at: int = -1,
    ) -> None:
        encoded = self._encoded.get(scopes)
        try:
            self._link.check()
        except StoreUnavailable:  # its slot is released once Redis answers again
            if encoded.holds_slots:
                self._unsettled.add(request_id, encoded, time.monotonic() + self._lease_s)
                self._release_later()
            raise
        self._settle(encoded, request_id, reserved, actual, at)

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        self._link.check()
        encoded = self._encoded.get(scopes)
        args = operation(encoded.renew_head, request_id, int(lease_s * 1000), 0, 0, b"0")
        self._add(encoded, args, 7, None)

    @property
    def fallback(self) -> LimiterBackend:
        return self._fallback

    @property
    def releasing(self) -> bool:
        """A release of failed admissions' slots is scheduled (:meth:`_release_later`)."""
        return self._release_timer is not None

    async def close(self) -> None:
        """The link is shared and closed by its owner."""
        self._closed = True
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._flush()

    def _settle(
        self, encoded: EncodedScopes, request_id: str, reserved: int, actual: int | None, at: int
    ) -> None:
        settled = -1 if actual is None else actual
        args = operation(
            encoded.settle_head, request_id, reserved, settled, at, encoded.settle_flags
        )
        if encoded.holds_slots:  # released again should this call fail (see _fail)
            self._batch.frees.append((request_id, encoded))
        self._add(encoded, args, 7, None)

    def _add(
        self, encoded: EncodedScopes, args: bytes, arg_count: int, waiter: _Waiter | None
    ) -> None:
        batch = self._batch
        batch.keys += encoded.keys
        batch.key_count += encoded.key_count
        batch.args += args
        batch.arg_count += arg_count
        batch.waiters.append(waiter)
        if waiter is not None:
            batch.reply_size += encoded.decision_size
        if len(batch.waiters) >= MAX_BATCH:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            self._link.fast.before_flush(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch = self._batch
        if not batch.waiters:
            return
        self._batch = _empty_batch()
        self._send(EVALSHA, batch)

    def _send(self, script: bytes, batch: _Batch) -> None:
        """``EVALSHA sha`` (or ``EVAL script``) numkeys keys... window args..."""
        count = 3 + batch.key_count + 1 + batch.arg_count
        command = b"*%d\r\n%s%s%s%s%s" % (
            count, script, bulk(b"%d" % batch.key_count), batch.keys, self._window, batch.args
        )  # fmt: skip
        reply = self._link.fast.send_encoded(command, BULK)
        reply.add_done_callback(lambda done: self._deliver(done, script, batch))

    def _deliver(self, done: asyncio.Future[Any], script: bytes, batch: _Batch) -> None:
        error = StoreUnavailable("cancelled") if done.cancelled() else done.exception()
        unknown_script = isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT")
        if unknown_script and script is EVALSHA:  # first use since Redis started
            self._send(EVAL, batch)
            return
        if error is not None:
            self._fail(batch, error)
            return
        result = done.result()
        reply = integers(result)
        if reply is None or len(reply) != batch.reply_size:
            reason = f"unexpected reply from the rate-limit script: {result!r:.80}"
            self._link.fast.reset(reason)
            self._fail(batch, StoreUnavailable(reason))
            return
        self._link.succeeded()
        unsettled = self._unsettled
        if unsettled.first or unsettled.again:
            self._release(unsettled.due(time.monotonic()))
            self._release_later()  # the second release
        try:
            self._decide(batch, reply)
        except IndexError:  # a refusal kind the script never sends
            reason = f"unexpected decision from the rate-limit script: {result!r:.80}"
            self._link.fast.reset(reason)
            self._fail(batch, StoreUnavailable(reason))

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        """Every admission of ``batch`` not decided yet fails with ``error``; its
        settlements' slots are released once Redis answers again (the call may have
        stopped before them: an ``OOM`` at an earlier operation's first write, a
        connection reset before Redis read it)."""
        self._link.failed(error)
        failure = StoreUnavailable(str(error))
        if batch.frees:
            lease_ends = time.monotonic() + self._lease_s
            for request_id, encoded in batch.frees:
                self._unsettled.add(request_id, encoded, lease_ends)
        for waiter in batch.waiters:
            if waiter is None:
                continue
            undecided = not waiter.future.done() or waiter.future.cancelled()
            if undecided and waiter.encoded.holds_slots:  # it may still run: release later
                lease_ends = time.monotonic() + self._lease_s
                self._unsettled.add(waiter.request_id, waiter.encoded, lease_ends)
            if not waiter.future.done():
                waiter.future.set_exception(failure)
        self._release_later()

    def _release_later(self) -> None:
        """Release what :class:`_Unsettled` holds once Redis answers, even if nothing
        else asks it: releases used to wait for the next rate-limit call to succeed, so
        a gateway that got no more limited traffic (a burst's end, a replica the
        balancer left) kept those slots taken for their whole lease, and the key's
        other replicas refused it meanwhile (churn hunt). Every :data:`RELEASE_AGAIN_S`
        while some wait, a PING asks whether Redis answers (a failed release of all of
        them each time would cost far more); one timer at a time."""
        unsettled = self._unsettled
        if self._closed or self._release_timer is not None:
            return
        if not (unsettled.first or unsettled.again):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next reply releases
            return
        self._release_timer = loop.call_later(RELEASE_AGAIN_S, self._probe)

    def _probe(self) -> None:
        self._release_timer = None
        try:
            self._link.check()
        except StoreUnavailable:  # resting after a failure: look again later
            self._release_later()
            return
        self._link.fast.send_nowait("PING", accept=STATUS).add_done_callback(self._probed)

    def _probed(self, done: asyncio.Future[Any]) -> None:
        error = StoreUnavailable("cancelled") if done.cancelled() else done.exception()
        if self._closed:
            return
        if error is not None:
            self._link.failed(error)
        else:
            self._link.succeeded()
            self._release(self._unsettled.due(time.monotonic()))
        self._release_later()

    def _release(self, admissions: list[tuple[str, EncodedScopes]]) -> None:
        """Free the concurrency slots of ``admissions`` (a settlement of 0 tokens
        reserved and used: it changes no counter)."""
        for request_id, encoded in admissions:
            self._settle(encoded, request_id, 0, 0, -1)

    def _decide(self, batch: _Batch, reply: list[int]) -> None:
        position = 0
        for waiter in batch.waiters:
            if waiter is None:
                continue
            decision = read_decision(reply, position, waiter.encoded.scopes)
            position += waiter.encoded.decision_size
            if not waiter.future.done():
                waiter.future.set_result(decision)
            elif decision.admitted:  # its caller left while Redis decided: undo the charge
                reserved = waiter.prompt + waiter.choices * decision.granted
                with contextlib.suppress(StoreUnavailable):
                    self._settle(waiter.encoded, waiter.request_id, reserved, 0, decision.at)
