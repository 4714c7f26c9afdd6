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
key's requests until their leases expire (``ratelimit.concurrency_lease_s``). Their
token reservations stay counted for one window: erring toward the limit, and bounded.
The same goes for a settlement whose script call failed once sent: the call may have
stopped before it (a full Redis fails a call at its first write that needs memory,
an earlier admission's, and runs nothing after it), so its slot is released again
too (``ZREM`` of a request id is harmless if it already ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp_wire import BULK, RedisReplyError, bulk
from gateway.errors import StoreUnavailable
from gateway.ratelimit.limits import (
    NEVER,
    REFUSAL_KINDS,
    WINDOW_S,
    Decision,
    LimiterBackend,
    LimitScope,
    ScopesMemo,
    ScopeState,
)

_SCRIPT = resources.files("gateway.backends.redis").joinpath("limiter.lua").read_text("utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_EVALSHA = b"$7\r\nEVALSHA\r\n" + bulk(_SHA.encode())
_EVAL = b"$4\r\nEVAL\r\n" + bulk(_SCRIPT.encode())
MAX_BATCH = 128


@dataclass(frozen=True, slots=True)
class _EncodedScopes:
    """What every operation on one set of scopes sends, in RESP form, encoded once."""

    keys: bytes  # window and slots key of every scope
    key_count: int
    scopes: int
    admit_head: bytes  # "a", scope count
    settle_head: bytes  # "s", scope count
    renew_head: bytes  # "r", scope count
    limits: bytes  # rpm, tpm, max_concurrent of every scope
    settle_flags: bytes  # a digit per scope: 1 if it has a tpm, plus 2 if a max_concurrent
    decision_size: int  # integers in the reply to one admission
    holds_slots: bool  # some scope has a concurrency limit


class _Waiter(NamedTuple):
    """An admission waiting for its decision, and what undoing it would take (a tuple:
    one is made on every request)."""

    future: asyncio.Future[Decision]
    encoded: _EncodedScopes
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
    frees: list[tuple[str, _EncodedScopes]]  # settlements that free concurrency slots


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
        self.first: dict[str, tuple[_EncodedScopes, float]] = {}
        self.again: dict[str, tuple[_EncodedScopes, float]] = {}
        self.again_at = 0.0

    def add(self, request_id: str, encoded: _EncodedScopes, lease_ends: float) -> None:
        self.first[request_id] = (encoded, lease_ends)
        while len(self.first) > MAX_UNSETTLED:
            del self.first[next(iter(self.first))]

    def due(self, now: float) -> list[tuple[str, _EncodedScopes]]:
        """The admissions to release now that Redis answered: the new ones (kept for a
        second release), then those whose second release has come. A second release
        already pending is not put off by newer first ones: they wait for the next."""
        due: list[tuple[str, _EncodedScopes]] = []
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
        self._prefix = prefix
        self._window = bulk(b"%d" % int(window_s * 1000))
        self._batch = _empty_batch()
        self._scheduled = False
        self._encoded = ScopesMemo(self._encode)
        self._fallback = MemoryLimiter(window_s=window_s)
        self._lease_s = 0.0
        self._unsettled = _Unsettled()

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
        args = _operation(
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
            raise
        self._settle(encoded, request_id, reserved, actual, at)

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        self._link.check()
        encoded = self._encoded.get(scopes)
        args = _operation(encoded.renew_head, request_id, int(lease_s * 1000), 0, 0, b"0")
        self._add(encoded, args, 7, None)

    @property
    def fallback(self) -> LimiterBackend:
        return self._fallback

    async def close(self) -> None:
        """The link is shared and closed by its owner."""
        self._flush()

    def _encode(self, scopes: Sequence[LimitScope]) -> _EncodedScopes:
        keys, limits, flags = bytearray(), bytearray(), bytearray()
        for scope in scopes:
            base = f"{self._prefix}{scope.key}".encode()
            keys += bulk(base + b":win") + bulk(base + b":slots")
            for limit in scope.limits.as_args():
                limits += bulk(b"%d" % limit)
            tokens, slots = scope.limits.tpm is not None, scope.limits.max_concurrent is not None
            flags += b"%d" % (tokens + 2 * slots)
        count = bulk(b"%d" % len(scopes))
        return _EncodedScopes(
            bytes(keys),
            2 * len(scopes),
            len(scopes),
            bulk(b"a") + count,
            bulk(b"s") + count,
            bulk(b"r") + count,
            bytes(limits),
            bytes(flags),
            5 + 3 * len(scopes),
            any(scope.limits.max_concurrent is not None for scope in scopes),
        )

    def _settle(
        self, encoded: _EncodedScopes, request_id: str, reserved: int, actual: int | None, at: int
    ) -> None:
        settled = -1 if actual is None else actual
        args = _operation(
            encoded.settle_head, request_id, reserved, settled, at, encoded.settle_flags
        )
        if encoded.holds_slots:  # released again should this call fail (see _fail)
            self._batch.frees.append((request_id, encoded))
        self._add(encoded, args, 7, None)

    def _add(
        self, encoded: _EncodedScopes, args: bytes, arg_count: int, waiter: _Waiter | None
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
        self._send(_EVALSHA, batch)

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
        if unknown_script and script is _EVALSHA:  # first use since Redis started
            self._send(_EVAL, batch)
            return
        if error is not None:
            self._fail(batch, error)
            return
        result = done.result()
        reply = _integers(result)
        if reply is None or len(reply) != batch.reply_size:
            reason = f"unexpected reply from the rate-limit script: {result!r:.80}"
            self._link.fast.reset(reason)
            self._fail(batch, StoreUnavailable(reason))
            return
        self._link.succeeded()
        unsettled = self._unsettled
        if unsettled.first or unsettled.again:
            self._release(unsettled.due(time.monotonic()))
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

    def _release(self, admissions: list[tuple[str, _EncodedScopes]]) -> None:
        """Free the concurrency slots of ``admissions`` (a settlement of 0 tokens
        reserved and used: it changes no counter)."""
        for request_id, encoded in admissions:
            self._settle(encoded, request_id, 0, 0, -1)

    def _decide(self, batch: _Batch, reply: list[int]) -> None:
        position = 0
        for waiter in batch.waiters:
            if waiter is None:
                continue
            decision = _decision(reply, position, waiter.encoded.scopes)
            position += waiter.encoded.decision_size
            if not waiter.future.done():
                waiter.future.set_result(decision)
            elif decision.admitted:  # its caller left while Redis decided: undo the charge
                reserved = waiter.prompt + waiter.choices * decision.granted
                with contextlib.suppress(StoreUnavailable):
                    self._settle(waiter.encoded, waiter.request_id, reserved, 0, decision.at)


def _operation(head: bytes, request_id: str, w: int, x: int, y: int, z: bytes) -> bytes:
    """One operation's arguments in RESP form: its head (mode, scope count), the request
    id, three integers and a last argument (admit: prompt tokens, wanted, choices, lease
    ms; settle: reserved, actual, admission bucket, settle flags; renew: lease ms, 0, 0,
    0). One format call: this runs on every request."""
    rid = request_id.encode()
    one, two, three = b"%d" % w, b"%d" % x, b"%d" % y
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        head, len(rid), rid, len(one), one, len(two), two, len(three), three, len(z), z
    )  # fmt: skip


def _integers(reply: object) -> list[int] | None:
    """The integers in the script's reply; None if it is not a string of integers."""
    if not isinstance(reply, bytes):
        return None
    try:
        return [int(value) for value in reply.split()]
    except ValueError:
        return None


def _decision(reply: list[int], at: int, scopes: int) -> Decision:
    """The decision at ``reply[at:]``: admitted, refusal, retry-after ms, output tokens
    granted per choice, the admission's bucket, then requests, tokens and reset ms per
    scope."""
    if scopes == 1:  # the common case
        states: tuple[ScopeState, ...] = (
            ScopeState(reply[at + 5], reply[at + 6], reply[at + 7] / 1000),
        )
    else:
        states = tuple(
            ScopeState(reply[i], reply[i + 1], reply[i + 2] / 1000)
            for i in range(at + 5, at + 5 + 3 * scopes, 3)
        )
    refused = reply[at + 1]
    if not refused:
        return Decision(True, None, 0.0, states, reply[at + 3], reply[at + 4])
    retry_after = NEVER if reply[at + 2] < 0 else reply[at + 2] / 1000
    return Decision(False, REFUSAL_KINDS[refused - 1], retry_after, states)
