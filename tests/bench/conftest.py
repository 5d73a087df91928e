"""Fixtures the bench tests share."""

from __future__ import annotations

import pytest

from bench.traces import Trace, load_traces, traces_dir


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    """The 12 real traces, or a skip when they are not at hand."""
    directory = traces_dir()
    found = load_traces(directory) if directory.is_dir() else []
    if not found:
        pytest.skip("shared/traces/real not found (set CLAWVM_TRACES)")
    return found
