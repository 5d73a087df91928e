"""bench.ui on a short session: the counts it reports (its timings are figures, never asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.ui import UIReport, chromium_path, format_ui, run_ui


def test_the_bench_builds_the_session_and_times_every_view() -> None:
    report = run_ui(turns=4, budget=4000, repeats=1)
    assert isinstance(report, UIReport) and report.failures == 0
    assert report.records == 4  # one record per request, all kept
    assert report.heat_rows == 2 + 2 * 3  # system, task, then a call and its result per later turn
    assert report.heat_cells == report.heat_rows * 4 and report.timeline_bytes > 0
    for timed in (report.timeline, report.sessions, report.page, report.prompt):
        assert len(timed.samples_ms) == 1 and timed.median_ms == timed.samples_ms[0]
    assert (report.browser is not None) == Path(chromium_path()).exists()
    lines = format_ui(report)
    assert lines[0].startswith("session inspector: one 4-turn session") and len(lines) == 5
