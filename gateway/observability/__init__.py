"""What the gateway records about its turns, for people and tools: a turn's observation written
out (`observe`), the per-session decision and event streams (`audit`), the session inspector's
per-turn records (`inspector`) and the views computed from them on read (`timeline`), and the
Prometheus metrics (`metrics`)."""
