"""What ``vgate up`` serves with no model configured: the chat and the embeddings model."""

from __future__ import annotations

from engines.process import build_argv
from gateway.cli.stack import default_models, with_default_model
from gateway.config.settings import Settings


def test_both_embedded_models_are_served_by_default() -> None:
    chat, embeddings = default_models()
    assert chat.name == "smollm2-135m" and embeddings.name == "all-minilm-l6-v2"
    assert chat.engine is not None and embeddings.engine is not None
    assert (chat.engine.source, chat.engine.dtype) == ("default", "float32")
    assert chat.engine.tool_call_parser == "hermes" and chat.engine.enable_auto_tool_choice
    assert (embeddings.engine.source, embeddings.engine.runner) == ("default-embeddings", "pooling")
    assert embeddings.engine.dtype == "float32"
    argv = build_argv(embeddings.engine, "py", "/m", embeddings.name, 1)
    assert argv[argv.index("--runner") + 1] == "pooling"


def test_defaults_apply_only_without_configured_models() -> None:
    assert [m.name for m in with_default_model(Settings()).models] == [
        "smollm2-135m",
        "all-minilm-l6-v2",
    ]
    configured = Settings.model_validate({"models": [{"name": "mine", "endpoints": ["http://x"]}]})
    assert with_default_model(configured) is configured
