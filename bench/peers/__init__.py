"""Peers run side by side with the gateway on the real traces: direct, a plain passthrough,
LiteLLM proxy (with message trimming to the budget) and Headroom's proxy (`bench.peers.compare`)."""
