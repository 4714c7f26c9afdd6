"""Engine processes: specs, launching, supervision, the registry, stats parsing, the
stub engine and the embedded default models. Never imports ``gateway``."""
