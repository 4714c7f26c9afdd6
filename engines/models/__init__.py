"""The embedded default models: fetching, GGUF conversion, AWQ quantization.

The conversion and quantization scripts run in the engine's own venv (torch),
never imported by the gateway."""
