"""The deterministic OpenAI-compatible fake engine (``python -m engines.stub``)."""
