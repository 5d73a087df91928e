"""Benchmarks, the replay harness and the fake upstream."""
