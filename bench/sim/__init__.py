"""The paper's synthetic sweep (Tier-2): workloads, a deterministic replay engine driving the
pure policy core, the h-turn oracle, the six policies of §7.2 and the sweep that prints the
Table-4 and Table-6 style summaries. Run it with `python -m bench.sim.sweep`."""
