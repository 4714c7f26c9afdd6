"""The Responses API's stored responses: retrieve, delete, cancel and list input items.

Each counts against its key's request rate and concurrency (no tokens: the key's own
limits, not a model's), is answered only to the key that stored the record (another
key's id is answered exactly as an unknown one), and reads a record only when the
answer needs it: delete and cancel ask the key's own bookkeeping whose it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.auth.authenticator import Principal
from gateway.errors import InvalidRequestError, error_body
from gateway.pipeline.response_records import Loaded, ResponseRecords
from gateway.pipeline.results import Answer
from gateway.ratelimit.admission import Admission, Ticket
from gateway.responses.conversation import ResponseNotFoundError, check_found
from gateway.responses.encoding import written_from_record
from gateway.responses.listing import input_items_page
from gateway.responses.store import StoredResponse


class NotCancellableError(InvalidRequestError):
    """Cancel of a response not created in the background (400, as at OpenAI: no code)."""

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.param, None)


class StoredResponses:
    """Reads and deletes of the key's stored responses (``ResponseRecords``)."""

    def __init__(self, admission: Admission, records: ResponseRecords) -> None:
        self._admission = admission
        self._records = records

    async def retrieve(self, response_id: str, principal: Principal) -> Answer:
        ticket = await self._charge(principal)
        try:
            async with self._own(response_id, principal) as loaded:
                record = check_found(loaded, principal.name, ResponseNotFoundError(response_id))
                body = await written_from_record(record.response, record, _response_of)
                return Answer(body, [])
        finally:
            ticket.settle(0)

    async def delete(self, response_id: str, principal: Principal) -> Answer:
        ticket = await self._charge(principal)
        try:
            await self._check_owned(response_id, principal)
            if not await self._records.delete(response_id, principal.name):
                raise ResponseNotFoundError(response_id)  # another delete came first
        finally:
            ticket.settle(0)
        body = {"id": response_id, "object": "response", "deleted": True}
        return Answer(orjson.dumps(body), [])

    async def cancel(self, response_id: str, principal: Principal) -> Answer:
        ticket = await self._charge(principal)
        try:
            await self._check_owned(response_id, principal)
        finally:
            ticket.settle(0)
        raise NotCancellableError("Cannot cancel a synchronous response.", param="response_id")

    async def input_items(
        self, response_id: str, principal: Principal, query: Mapping[str, str]
    ) -> Answer:
        ticket = await self._charge(principal)
        try:
            async with self._own(response_id, principal) as loaded:
                record = check_found(loaded, principal.name, ResponseNotFoundError(response_id))
                page = input_items_page(record, query)
                body = await written_from_record(
                    page, record, lambda exact: input_items_page(exact, query)
                )
                return Answer(body, [])
        finally:
            ticket.settle(0)

    async def _charge(self, principal: Principal) -> Ticket:
        """A request on stored responses counts against its key's request rate and
        concurrency (no tokens; the key's own limits, not a model's): a key over its
        ``rpm`` gets 429 before anything is read, and ``max_concurrent`` bounds how
        many (up to ``responses.max_stored_bytes`` each) it has read at once."""
        return await self._admission.admit(principal.key_scopes(), {}, tokens=False)

    async def _check_owned(self, response_id: str, principal: Principal) -> None:
        """404 unless the key has a record under ``response_id``: asked of its own
        bookkeeping, the record neither read nor decoded (up to
        ``responses.max_stored_bytes`` each, only to learn its owner)."""
        missing = ResponseNotFoundError(response_id)
        if not await self._records.owned(response_id, principal.name, missing):
            raise missing

    def _own(self, response_id: str, principal: Principal) -> Loaded:
        """The key's record (``async with``; None when it has none: :func:`check_found`)."""
        return self._records.loaded(response_id, principal.name, ResponseNotFoundError(response_id))


def _response_of(record: StoredResponse) -> dict[str, Any]:
    return record.response
