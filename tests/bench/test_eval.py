"""bench.eval: the one command. A --quick run end to end, and a rerun giving the same numbers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from bench.eval import SECTIONS, Plan, Progress, chosen_traces, injector_row, read_sections
from bench.lifecycle_replay import BoundaryRecord
from bench.report import PLOTS, stable
from bench.traces import Trace, load_traces, traces_dir

HAVE_TRACES = traces_dir().is_dir() and bool(load_traces(traces_dir()))


def _trace(name: str, size: int) -> Trace:
    return Trace(name, [{"role": "user", "content": "x"}] * size, [])


def test_progress_counts_steps_on_a_plain_stream() -> None:
    sink = io.StringIO()
    progress = Progress(4, sink)
    progress.step("one")
    progress.step("two")
    progress.close()
    lines = sink.getvalue().splitlines()
    assert lines[0].startswith("[######------------------] 1/4 one")
    assert lines[1].startswith("[############------------] 2/4 two")


def test_a_quick_plan_takes_the_shortest_traces() -> None:
    traces = [_trace("b", 9), _trace("a", 3), _trace("c", 3)]
    assert [t.name for t in chosen_traces(traces, Plan.of(True))] == ["a", "c"]
    assert chosen_traces(traces, Plan.of(False)) == traces


def test_injector_row_counts_unclean_boundaries() -> None:
    clean = BoundaryRecord("t", "reset", 3, 200, "reset", "0", (), (), "reset")
    missing = BoundaryRecord("u", "reset", 3, 200, "reset", "0", ("Always X.",), (), "reset")
    row = injector_row([clean, missing])
    assert (row["boundaries"], row["ok"], row["missing"], row["wrong_event"]) == (2, 1, 1, 0)
    assert row["examples"] == ["u: status 200, event reset (expected reset); missing 'Always X.'"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    assert bench_main(["eval", "--quick", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_quick_eval_writes_every_section_the_report_and_the_plots(quick_run: Path) -> None:
    assert sorted(read_sections(quick_run)) == sorted(SECTIONS)
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# ClawVM Gateway: evaluation report")
    assert "python -m bench eval --quick" in report and "## Bars missed and why" in report
    for name in PLOTS.values():
        assert (quick_run / name).read_bytes().startswith(b"\x89PNG")
    stress = json.loads((quick_run / "stress.json").read_text(encoding="utf-8"))
    assert stress["starvation"]["hidden"] == 0 and stress["planted"]["retained"] == []


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_a_rerun_gives_the_same_numbers_timings_aside(quick_run: Path, tmp_path: Path) -> None:
    again = ["synthetic", "traces", "lifecycle", "stress"]
    assert bench_main(["eval", "--quick", "--out", str(tmp_path), "--only", *again]) == 0
    first, second = read_sections(quick_run), read_sections(tmp_path)
    for name in again:
        assert stable(second[name]) == stable(first[name]), name


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_report_only_rewrites_the_report_from_the_json(quick_run: Path) -> None:
    before = (quick_run / "report.md").read_text(encoding="utf-8")
    assert bench_main(["eval", "--report-only", "--out", str(quick_run)]) == 0
    after = (quick_run / "report.md").read_text(encoding="utf-8")
    assert after == before  # the command that produced the numbers included


def test_report_only_exits_1_on_a_measurement_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marks = [(10, 500.0), (1000, -2799.0)]  # turn 1000's overhead measured below zero
    http = [
        {"turn": t, "messages": 2 * t, "request_bytes": 1000 * t, "samples": 5, "direct_median_us": 100.0,
         "gateway_median_us": 100.0 + a, "added_median_us": a, "policy_header_median_us": 80.0,
         "overhead_header_median_us": a}
        for t, a in marks
    ]  # fmt: skip
    policy = [{"turn": t, "messages": 2 * t, "median_us": 100.0, "samples_us": [100.0]} for t, _ in marks]
    growth = {"budget": 4000, "window": 2, "marks": [10, 1000], "policy": policy, "http": http, "failures": 0}
    (tmp_path / "growth.json").write_text(json.dumps(growth), encoding="utf-8")
    assert bench_main(["eval", "--report-only", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "measurement error, gateway overhead follows new content" in err and "-2799.0" in err
    assert "**gateway overhead follows new content (turn 1000 over turn 10 < 2.0x)**: measurement error" in (
        tmp_path / "report.md"
    ).read_text(encoding="utf-8")
