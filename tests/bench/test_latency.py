from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.latency import (
    BenchError,
    Server,
    gateway_argv,
    group_alive,
    growing_bodies,
    latency_trace,
    logged_timings,
    prefix,
    stage_medians_us,
    static_bodies,
    stop,
    wait_healthy,
    write_config,
)
from bench.traces import Trace
from gateway.settings import load_settings
from gateway.store.embedded import free_port
from gateway.wire.chat_json import parse_messages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def figures(traces: list[Trace], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`python -m bench latency --requests 20`, run as the README runs it."""
    output = tmp_path_factory.mktemp("bench") / "latency.json"
    argv = [sys.executable, "-m", "bench", "latency", "--requests", "20", "--warmup", "5", "--json", str(output)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "added (median gateway - median direct)" in done.stdout
    return json.loads(output.read_text())["latency"]


def test_both_paths_answer_every_request(figures: dict[str, Any]) -> None:
    assert figures["failures"] == 0
    shapes = [("static", False), ("static", True), ("growing", False), ("growing", True)]
    assert [(s["wire"], s["name"], s["stream"]) for s in figures["series"]] == [
        (wire, name, stream) for wire in ("chat", "messages", "responses") for name, stream in shapes
    ]
    for series in figures["series"]:
        assert series["direct_failures"] == series["gateway_failures"] == 0
        for path in ("direct", "gateway"):
            assert series[path]["count"] == 20
            assert 0 < series[path]["median_us"] <= series[path]["p95_us"] <= series[path]["p99_us"]
        assert series["added_median_us"] == round(series["gateway"]["median_us"] - series["direct"]["median_us"], 1)


def test_the_gateway_reported_its_own_timings(figures: dict[str, Any]) -> None:
    for series in figures["series"]:
        assert series["overhead_header"]["count"] == 20
        assert series["policy_header"]["count"] == 20
        assert series["overhead_header"]["median_us"] >= series["policy_header"]["median_us"]
        assert {"parse", "ingest", "assemble", "store", "serialise", "upstream"} <= set(series["stages"])


def test_every_process_is_gone_afterwards(figures: dict[str, Any]) -> None:
    processes = figures["processes"]
    assert [p["name"] for p in processes] == ["fake upstream", "gateway"]
    for process in processes:
        assert process["exit_code"] is not None
        assert not group_alive(process["pid"])  # the gateway's redis-server was in its group


def test_the_report_names_the_body(figures: dict[str, Any], traces: list[Trace]) -> None:
    assert figures["trace"] == latency_trace(traces).name
    assert figures["prefix_messages"] >= 10
    assert figures["requests"] == 20 and figures["warmup"] == 5
    assert figures["budget"] == 16000


def test_latency_body_is_a_tau_bench_prefix_with_tools(traces: list[Trace]) -> None:
    trace = latency_trace(traces)
    assert trace.name.startswith("taubench") and trace.tools
    messages = prefix(trace)
    assert len(messages) >= 10
    parse_messages(messages)


def test_static_bodies_repeat_the_same_bytes(traces: list[Trace]) -> None:
    bodies = static_bodies(latency_trace(traces), True, "s")
    body = json.loads(bodies(0))
    assert bodies(0) == bodies(7)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["user"] == "s" and body["tools"]


def test_growing_bodies_append_one_valid_step_per_request(traces: list[Trace]) -> None:
    trace = latency_trace(traces)
    bodies = growing_bodies(trace, False, "g")
    first, third = json.loads(bodies(0)), json.loads(bodies(2))
    start = len(prefix(trace))
    assert len(first["messages"]) == start + 2
    assert len(third["messages"]) == start + 6
    assert third["messages"][: start + 2] == first["messages"]
    assert "stream" not in third
    assert bodies(2) == growing_bodies(trace, False, "g")(2)
    parse_messages(third["messages"])


def test_gateway_config_points_the_store_at_the_scratch_directory(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, {})
    assert settings.store.embedded
    assert settings.store.data_dir == tmp_path / "data"
    argv = gateway_argv(config, 4100, "http://127.0.0.1:4200/v1", 16000)
    assert argv[-10:] == [
        "--port", "4100", "--upstream", "http://127.0.0.1:4200/v1", "--store", "embedded",
        "--log-level", "warning", "--budget", "16000",
    ]  # fmt: skip
    assert "--budget" not in gateway_argv(config, 4100, "http://127.0.0.1:4200/v1", None)


def test_the_gateway_config_logs_each_turns_timings(tmp_path: Path) -> None:
    assert load_settings(write_config(tmp_path), {}).server.log_timings


def test_logged_timings_reads_every_workers_timings_lines(tmp_path: Path) -> None:
    log = tmp_path / "clawvm.log"
    log.write_text(
        "2026-12-07 21:00:00,001 INFO clawvm.timings: parse;dur=0.200, upstream;dur=2.000, after;dur=1.000\n"
        "2026-12-07 21:00:00,002 WARNING clawvm.gateway: a turn's save failed\n"
        "2026-12-07 21:00:00,003 INFO clawvm.timings: parse;dur=0.400, commit;dur=0.900, after;dur=3.000\n"
    )
    logged = logged_timings(log)
    assert logged == [
        {"parse": 200.0, "upstream": 2000.0, "after": 1000.0},
        {"parse": 400.0, "commit": 900.0, "after": 3000.0},
    ]
    assert logged_timings(tmp_path / "missing.log") == []


def test_stage_medians_take_the_headers_then_what_only_the_log_has() -> None:
    header = [{"parse": 100.0, "upstream": 1000.0}, {"parse": 300.0, "upstream": 3000.0}, {"parse": 200.0}]
    logged = [{"parse": 9.0, "after": 5.0}, {"after": 1.0, "commit": 7.0}, {"after": 3.0}]
    medians = stage_medians_us(header, logged)
    assert medians == {"parse": 200.0, "upstream": 1000.0, "after": 3.0, "commit": 7.0}  # a missing stage: 0
    assert stage_medians_us([], []) == {}


def test_stop_clears_the_whole_process_group(tmp_path: Path) -> None:
    """A child the leader leaves behind is stopped too."""
    process = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    server = Server("sleepers", process, tmp_path / "none.log")
    assert group_alive(process.pid)
    stop(server)
    assert server.exit_code is not None
    assert not group_alive(process.pid)


def test_a_server_that_dies_while_starting_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "dead.log"
    log.write_text("boom: cannot start\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    server = Server("dead", process, log)
    with pytest.raises(BenchError, match=r"dead exited with 3 while starting:\nboom: cannot start"):
        wait_healthy(server, f"http://127.0.0.1:{free_port()}/health")
    stop(server)
