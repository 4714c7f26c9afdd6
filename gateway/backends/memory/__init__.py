"""In-process stores for a single gateway without Redis: same interfaces as ``redis``."""
