"""What the engines report about the models they serve, learnt from their ``GET /v1/models``.

vLLM describes each model it serves with a card: ``max_model_len``, ``root`` (the
path or hub id it was loaded from, or a LoRA adapter's path) and ``parent`` (a
LoRA adapter's base model). The gateway's ``/v1/models`` and ``/v1/models/{id}``
carry those facts, so :class:`EngineModels` reads every engine's list in the
background (the ``model-info`` task), never on a request's path: at once when an
engine joins the pool, again every ``refresh_s``, and on the next step for an
engine that did not answer.

Names are the client's: an engine serves a model under its ``upstream_model``
name, which is replaced by the gateway's own (in ``root`` too, when vLLM reports
the served name there, and in an adapter's ``parent``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.pool.engine_pool import EnginePool

DEFAULT_REFRESH_S = 60.0
MAX_CARDS = 4096
"""Cards read from one engine's list at most (an engine is trusted, not unbounded)."""


class ModelListSource(Protocol):
    """What :class:`EngineModels` needs of the upstream client (a fake in tests)."""

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        """``GET url`` as text, or None when it does not answer 200 in time."""
        ...


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """One model as its engine describes it (None: not reported)."""

    max_model_len: int | None = None
    root: str | None = None
    parent: str | None = None

    def fields(self) -> dict[str, Any]:
        """The facts as fields of an OpenAI model object (``parent`` always present, as
        vLLM sends it: null for a base model)."""
        found: dict[str, Any] = {"parent": self.parent}
        if self.root is not None:
            found["root"] = self.root
        if self.max_model_len is not None:
            found["max_model_len"] = self.max_model_len
        return found


@dataclass(frozen=True, slots=True)
class _Listing:
    cards: Mapping[str, ModelFacts]  # by the engine's model id
    fetched_at: float


class EngineModels:
    """The facts of every model in the pool, by client-facing name (:attr:`facts`)."""

    def __init__(
        self,
        pool: EnginePool,
        source: ModelListSource,
        served_names: Mapping[str, str],
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``served_names``: client-facing name → the engines' name, for models served
        under another name (every other model is served under its own)."""
        self._pool = pool
        self._source = source
        self._served = dict(served_names)
        self._clients = {served: name for name, served in served_names.items()}
        self._refresh_s = refresh_s
        self._clock = clock
        self._listings: dict[str, _Listing] = {}
        self.facts: Mapping[str, ModelFacts] = {}
        """Facts by client-facing model name; replaced whole, never mutated."""
        self.version = 0
        """Incremented whenever :attr:`facts` changes (for caches built from it)."""

    async def refresh(self) -> None:
        """One step: read the lists of engines that joined, are due or did not answer."""
        engines = self._engines()
        now = self._clock()
        due = [
            url
            for url in dict.fromkeys(u for urls in engines.values() for u in urls)
            if url not in self._listings or now - self._listings[url].fetched_at >= self._refresh_s
        ]
        gone = self._listings.keys() - {u for urls in engines.values() for u in urls}
        for url in gone:
            del self._listings[url]
        if due:
            texts = await asyncio.gather(*(self._fetch(url) for url in due))
            for url, text in zip(due, texts, strict=True):
                cards = _cards(text) if text is not None else None
                if cards is not None:
                    self._listings[url] = _Listing(cards, now)
        facts = self._combine(engines)
        if facts != self.facts:
            self.facts = facts
            self.version += 1

    async def _fetch(self, url: str) -> str | None:
        """The engine's model list, asked with the key it demands (as its /metrics)."""
        return await self._source.fetch_text(
            f"{url}/v1/models", self._pool.credentials.headers(url)
        )

    def _engines(self) -> dict[str, tuple[str, ...]]:
        """Each model's engines now (those a request could be routed to)."""
        return {m: tuple(v.url for v in self._pool.snapshot(m)) for m in self._pool.models()}

    def _combine(self, engines: Mapping[str, tuple[str, ...]]) -> dict[str, ModelFacts]:
        facts: dict[str, ModelFacts] = {}
        for model, urls in engines.items():
            served = self._served.get(model, model)
            for url in urls:
                listing = self._listings.get(url)
                card = listing.cards.get(served) if listing is not None else None
                if card is not None:
                    facts[model] = self._renamed(card, model, served)
                    break
        return facts

    def _renamed(self, card: ModelFacts, model: str, served: str) -> ModelFacts:
        """``card`` with the engines' names replaced by the client's, and a ``root`` that is
        a path on the engine's host (a managed engine's model or adapter directory) replaced
        by the model's name: clients never learn the servers' file layout."""
        root = card.root
        if root == served or (root is not None and root.startswith(("/", ".", "~", "\\"))):
            root = model
        parent = card.parent
        if parent is not None and not self._pool.has_model(parent):  # served under another name
            parent = self._clients.get(parent, parent)
        return ModelFacts(card.max_model_len, root, parent)


def _cards(text: str) -> dict[str, ModelFacts] | None:
    """The cards of a vLLM ``/v1/models`` answer by model id; None when it is not one.
    Fields of the wrong type count as absent."""
    try:
        listing = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    cards: dict[str, ModelFacts] = {}
    for card in data[:MAX_CARDS]:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            continue
        length = card.get("max_model_len")
        root, parent = card.get("root"), card.get("parent")
        cards[card["id"]] = ModelFacts(
            length if isinstance(length, int) and not isinstance(length, bool) else None,
            root if isinstance(root, str) else None,
            parent if isinstance(parent, str) else None,
        )
    return cards
