from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.fake_upstream import agent_responder
from bench.latency import group_alive
from bench.load import (
    Agent,
    LoadPlan,
    StreamState,
    error_kind,
    format_load,
    headlines,
    passed,
    percentile,
    rig,
    rss_bytes,
    run_load,
    write_results,
)
from gateway.wire.chat_json import parse_messages


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny load run: 5 sessions (and 1 direct control session) for 3 seconds, two workers,
    the fake model's first byte after half a second."""
    return run_load(tmp_path_factory.mktemp("load"), LoadPlan(sessions=5, seconds=3.0, first_byte_s=0.5, workers=2))


def test_every_session_streams_whole_answers_without_errors(figures: dict[str, Any]) -> None:
    assert figures["sessions"] == 5 and figures["control_sessions"] == 1
    assert figures["errors"] == 0 and figures["gateway"]["errors"] == {}
    assert figures["ok"] == figures["requests"] > 0
    assert figures["turns_per_session"]["min"] >= 1  # every session went round its loop
    assert figures["gateway"]["events_per_stream"] > 10  # role, content words, tool-call deltas, finish, usage
    assert figures["direct"]["ok"] > 0 and figures["direct"]["errors"] == {}
    assert figures["gateway_alive"]
    assert figures["answered_turns_not_stored"] == 0  # every answered turn is in the store


def test_the_report_carries_latency_memory_and_rss(figures: dict[str, Any]) -> None:
    for path in ("gateway", "direct"):
        stats = figures[path]
        assert 0 < stats["ttfb_p50_ms"] <= stats["ttfb_p99_ms"]
        assert stats["ttfb_p50_ms"] <= stats["total_p50_ms"] <= stats["total_p99_ms"]
    assert set(figures["added"]) == {"ttfb_p50_ms", "ttfb_p99_ms", "total_p50_ms", "total_p99_ms"}
    assert figures["redis_bytes_per_session"] > 0  # the sessions' pages landed in Redis
    assert 0 < figures["gateway_rss_mib"]["start"] <= figures["gateway_rss_mib"]["peak"]
    assert figures["cpu_s"]["gateway"] > 0  # the workers' CPU counted with the supervisor's
    assert figures["workers"] == 2 and figures["first_byte_s"] == 0.5
    assert figures["direct"]["ttfb_p50_ms"] >= 500  # the fake model's first byte waited as asked
    assert figures["requests_per_s_per_core"] > 0
    stages = figures["gateway_stages_p50_us"]  # the gateway's server-timing, each stage's median
    assert {"parse", "ingest", "assemble", "store", "serialise", "upstream"} <= set(stages)
    assert {"complete", "commit", "after"} <= set(stages)  # from the gateway's timings log
    assert all(value >= 0 for value in stages.values())


def test_the_markdown_and_json_are_written(figures: dict[str, Any], tmp_path: Path) -> None:
    suite = {"command": "python -m bench load --test", "load": figures, "chaos": {}}
    path = write_results(suite, tmp_path)
    text = path.read_text()
    assert "## Load: 5 concurrent streaming sessions for 3 s" in text
    assert "| errors | 0" in text
    assert json.loads((tmp_path / "load.json").read_text())["load"]["sessions"] == 5
    assert headlines(suite)[0].startswith("Load held: 5 concurrent streaming sessions for 3 s")
    assert passed(suite)
    assert not passed({**suite, "load": {**figures, "errors": 1}})
    assert "| errors | 0" in "\n".join(format_load(figures))


def test_the_rig_stops_every_process(tmp_path: Path) -> None:
    with rig(tmp_path) as running:
        pids = [running.gateway.pid, running.upstream.pid]
        assert rss_bytes(running.gateway.pid) > 0
        redis = running.redis
        assert redis.running and redis.pid is not None
    assert not any(group_alive(pid) for pid in pids)
    assert not redis.running


def test_an_agent_transcript_stays_a_valid_chat_request() -> None:
    agent = Agent("s-1")
    for _ in range(15):
        reply = agent_responder({"messages": agent.messages})
        calls = [{**call, "type": "function"} for call in reply["tool_calls"]]
        agent.absorb({"content": reply["content"], "tool_calls": calls})
    body = json.loads(agent.body())
    assert body["stream"] is True and agent.turns == 15
    messages = parse_messages(body["messages"])  # raises on a tool result without its call and the like
    calls = [len(m.get("tool_calls") or []) for m in body["messages"] if m["role"] == "assistant"]
    assert len(calls) == 15 and 2 in calls  # parallel tool calls now and then
    assert sum(1 for m in messages if m.role == "tool") == sum(calls)
    assert any("Never edit generated_7.py" in (m.get("content") or "") for m in body["messages"])
    assert agent.headers()["x-clawvm-session"] == "s-1"


def test_stream_state_rebuilds_the_answer_from_split_events() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "read", "arguments": '{"a"'}}]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]},
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    state = StreamState()
    for start in range(0, len(raw), 7):  # arbitrary network chunking
        state.feed(raw[start : start + 7])
    assert state.done and state.events == 5
    assert state.reply() == {
        "content": "Hello",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"a":1}'}}],
    }


def test_percentile_is_nearest_rank_and_errors_are_named() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert error_kind(503, '{"error": {"message": "the page store is unavailable"}}') == "http_503"
    assert error_kind(500, '{"error": {"message": "fake upstream injected failure 500"}}') == "http_500_injected"
    relayed = '{"error": {"message": "the upstream answered 500", "code": "fake_upstream_injected"}}'
    assert error_kind(500, relayed) == "http_500_injected"  # the gateway relays a 5xx's code, not its message


# ---------------------------------------------------------------- verdicts only from the numbers


def _load(**changes: Any) -> dict[str, Any]:
    """The load figures of a run that held, with `changes`."""
    gateway = {"requests": 40, "ok": 40, "degraded": 0, "errors": {}, "events_per_stream": 20.0}
    gateway |= {"ttfb_p50_ms": 5.0, "ttfb_p99_ms": 9.0, "total_p50_ms": 30.0, "total_p99_ms": 40.0}
    figures = {
        "sessions": 5,
        "control_sessions": 1,
        "seconds": 3.0,
        "requests": 40,
        "ok": 40,
        "errors": 0,
        "requests_per_s": 13.3,
        "gateway": gateway,
        "direct": {**gateway, "requests": 8, "ok": 8},
        "added": {"ttfb_p50_ms": 1.0, "ttfb_p99_ms": 2.0, "total_p50_ms": 1.0, "total_p99_ms": 2.0},
        "gateway_rss_mib": {"start": 100.0, "peak": 110.0, "end": 105.0},
        "redis_bytes_per_session": 2048,
        "gateway_alive": True,
        "answered_turns_not_stored": 0,
    }
    return figures | changes


def _phase(**changes: Any) -> dict[str, Any]:
    """A fault phase that passed, with `changes`."""
    data = {"pages_before": 100, "pages_after": 150, "lost": 0, "changed": 0, "answered_turns_not_stored": 0}
    phase = {"phase": "redis_kill", "sessions": 5, "requests": 60, "ok": 60, "errors": {}, "gateway_alive": True}
    return phase | {"all_sessions_progressed_after_s": 0.5, "data": data} | changes


def _fuzz(**changes: Any) -> dict[str, Any]:
    data = {"pages_before": 10, "pages_after": 20, "lost": 0, "changed": 0, "answered_turns_not_stored": 0}
    phase = {"phase": "bad_inputs", "probes": 300, "server_errors": 0, "transport_errors": 0, "sessions": 2}
    phase |= {"strategies": "bench.fuzz", "edge_cases": [], "edge_cases_not_200": [], "structural": {"problems": 0}}
    return phase | {"gateway_alive": True, "data": data} | changes


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"errors": 3, "gateway": {**_load()["gateway"], "errors": {"http_503": 3}}}, "3 errors (http_503 3)"),
        ({"answered_turns_not_stored": 2}, "2 answered turns not stored"),
        ({"gateway_alive": False}, "the gateway was not alive at the end"),
        ({"requests": 0, "ok": 0}, "nothing measured (0 requests, 0 whole)"),
        ({"direct": {**_load()["direct"], "ok": 0}}, "no control request measured"),
        ({"errors": None}, "None errors"),
    ],
)
def test_a_load_that_did_not_hold_is_not_said_to_have_held(changes: dict[str, Any], said: str) -> None:
    suite = {"load": _load(**changes), "chaos": {}}
    assert not passed(suite)
    line = headlines(suite)[0]
    assert line.startswith("Load NOT held (") and said in line and not line.startswith("Load held")


@pytest.mark.parametrize(
    "phase",
    [
        _phase(all_sessions_progressed_after_s=None),  # the sessions never resumed after the fault
        _phase(requests=0, ok=0),
        _phase(gateway_alive=False),
        _phase(data={"pages_before": 0, "pages_after": 0, "lost": 0, "changed": 0}),
        _phase(data={}),
    ],
)
def test_a_fault_phase_that_did_not_hold_or_measured_nothing_fails(phase: dict[str, Any]) -> None:
    assert not passed({"load": _load(), "chaos": {"redis_kill": phase}})


def test_fuzzing_that_sent_no_probe_fails() -> None:
    assert passed({"chaos": {"bad_inputs": _fuzz()}})
    assert not passed({"chaos": {"bad_inputs": _fuzz(probes=0)}})


def test_a_run_that_measured_nothing_fails() -> None:
    assert not passed({"command": "python -m bench load --no-load"})
    assert not passed({"load": {}, "chaos": {}})
