"""Redis stores shared by every replica: keys, rate-limit counters (one Lua script),
cache entries, and the lean pipelined RESP client of the hot path."""
