"""The embedded models by source name: what ``source: default`` and
``source: default-embeddings`` in an engine spec resolve to, and how each is prepared."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from engines.models.embeddings import EMBEDDINGS_MODEL_NAME, prepare_embeddings_model
from engines.models.prepare import DEFAULT_MODEL_NAME, prepare_default_model
from engines.models.tooling import Progress
from engines.spec import DEFAULT_EMBEDDINGS_SOURCE, DEFAULT_SOURCE

Preparer = Callable[[Path | None, Path | None, Progress], Path]

PREPARERS: Mapping[str, Preparer] = MappingProxyType(
    {DEFAULT_SOURCE: prepare_default_model, DEFAULT_EMBEDDINGS_SOURCE: prepare_embeddings_model}
)
"""Source name → the function that prepares it (idempotent; returns its directory)."""
MODEL_NAMES: Mapping[str, str] = MappingProxyType(
    {DEFAULT_SOURCE: DEFAULT_MODEL_NAME, DEFAULT_EMBEDDINGS_SOURCE: EMBEDDINGS_MODEL_NAME}
)
"""Source name → the model name ``vgate up`` serves it under."""


def prepare_embedded(
    source: str, cache_dir: Path | None, engine_python: Path | None, progress: Progress
) -> Path:
    """Prepare the embedded model ``source`` names (KeyError: not an embedded source)."""
    return PREPARERS[source](cache_dir, engine_python, progress)


def prepare_all(
    cache_dir: Path | None, engine_python: Path | None, progress: Progress
) -> list[Path]:
    """Prepare every embedded model, in order; the first failure raises."""
    return [prepare(cache_dir, engine_python, progress) for prepare in PREPARERS.values()]
