"""vgate: an OpenAI-compatible gateway for vLLM.

Layers, lowest first (``tests/unit/test_import_contract.py`` enforces the direction):
``errors`` and ``protocol`` (wire models) → ``config`` → the policies ``auth``,
``ratelimit``, ``cache``, ``routing`` → ``observability`` → ``backends`` →
``pool`` and ``upstream`` → ``pipeline`` → ``http`` → ``app`` (the composition
root) and ``cli``. ``background`` (supervised periodic work) sits beside
``observability``. Nothing is built at import time.
"""
