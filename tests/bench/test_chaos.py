from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import (
    PHASES,
    ChaosPlan,
    Probe,
    committed_pages,
    compare,
    edge_cases,
    format_chaos,
    fuzz_probes,
    lost_pages,
    run_chaos,
)
from bench.load import headlines, passed, write_results
from gateway.store.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every phase once, tiny: 5 sessions, each fault once, 40 fuzz examples."""
    return run_chaos(tmp_path_factory.mktemp("chaos"), ChaosPlan.tiny())


def test_every_phase_reports_its_counts(results: dict[str, Any]) -> None:
    assert tuple(results) == PHASES
    for name, phase in results.items():
        assert phase["phase"] == name
        assert phase["gateway_alive"], name
        assert phase["data"]["pages_before"] > 0, name  # there was committed state to lose


def test_no_committed_page_is_lost_or_changed_through_any_fault(results: dict[str, Any]) -> None:
    for name, phase in results.items():
        assert phase["data"]["lost"] == 0 and phase["data"]["changed"] == 0, (name, phase["data"])
        assert phase["data"]["pages_after"] >= phase["data"]["pages_before"]
    for name, phase in results.items():
        assert phase["data"]["answered_turns_not_stored"] == 0, name  # every answered turn is in the store
    assert lost_pages(results) == 0


def test_sessions_resume_after_each_fault(results: dict[str, Any]) -> None:
    for name in ("redis_kill", "gateway_kill", "upstream_faults"):
        phase = results[name]
        assert phase["all_sessions_progressed_after_s"] is not None, name
        assert phase["ok"] > 0 and phase["requests"] >= phase["ok"]


def test_the_gateway_kill_is_a_real_sigkill_and_restart(results: dict[str, Any]) -> None:
    phase = results["gateway_kill"]
    assert phase["gateway_exit_code"] == -9
    assert set(phase["errors"]) <= {"connect_refused", "disconnected", "truncated", "stream_error_event"}


def test_injected_upstream_faults_are_told_apart_from_the_gateways_own(results: dict[str, Any]) -> None:
    phase = results["upstream_faults"]
    assert phase["gateway_own_errors"] == 0, phase["errors"]
    assert phase["injected_errors_seen"] + phase["dropped_streams_seen"] == sum(phase["errors"].values())


def test_fuzzing_gives_no_5xx_and_no_crash(results: dict[str, Any]) -> None:
    phase = results["bad_inputs"]
    assert phase["probes"] > len(edge_cases())
    assert phase["server_errors"] == 0, phase["examples"]
    assert phase["transport_errors"] == 0, phase["examples"]
    assert phase["gateway_restarts"] == 0 and phase["health_after"] == 200
    assert phase["edge_cases_not_200"] == [], phase["edge_cases"]
    assert phase["session_errors"] == {}  # the sessions alongside were not disturbed
    swept = phase["structural"]  # bench.fuzz's structure-aware sweep, on one keep-alive connection
    assert swept["requests"] > 1000 and swept["problems"] == 0, swept
    assert swept["server_errors"] == 0 and swept["dropped_connections"] == 0


def test_the_report_has_a_table_per_phase(results: dict[str, Any], tmp_path: Path) -> None:
    text = "\n".join(format_chaos(results))
    for name in PHASES:
        assert f"## Chaos: {name.replace('_', ' ')}" in text
    assert "| committed pages lost / changed | 0 / 0 |" in text
    suite = {"command": "python -m bench load --test", "chaos": results}
    assert "Data lost: 0 of" in "\n".join(headlines(suite))
    assert passed(suite)
    assert write_results(suite, tmp_path).read_text().count("## Chaos:") == len(PHASES)


def test_compare_finds_lost_and_changed_pages() -> None:
    before = {"t/p:1": "a", "t/p:2": "b", "t/p:3": "c", "t/p:4": None}
    after = {"t/p:1": "a", "t/p:2": "B", "t/p:5": "e"}
    found = compare(before, after)
    assert (found["pages_before"], found["lost"], found["changed"], found["named_but_absent_before"]) == (3, 1, 1, 1)
    assert found["examples"] == ["t/p:3", "t/p:2"]


def test_committed_pages_reads_tables_and_their_pages(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as url:
        import redis

        with redis.Redis.from_url(url) as client:
            prefix = "cvm:{default:s:one}"
            client.hset(prefix + ":table", mapping={"v": 2, "data": '{"v":1,"pages":["p:a"]}', "base": 1})
            client.rpush(prefix + ":tlog", '{"delta":1,"pages":["p:b"]}')
            client.set(prefix + ":page:p:a", "A")
            client.set("cvm:{other:s:two}:page:p:z", "not the tenant's")
            assert committed_pages(url) == {f"{prefix}/p:a": "A", f"{prefix}/p:b": None}
            client.hset(prefix + ":table", "data", "not a table")
        assert committed_pages(url) == {}  # an unreadable table holds nothing: its pages count as lost


def test_fuzz_probes_are_drawn_deterministically() -> None:
    first, second = fuzz_probes(20, seed=1), fuzz_probes(20, seed=1)
    assert len(first) == 20 and first == second
    assert all(isinstance(p, Probe) and p.path.startswith("/v1/") for p in first)
