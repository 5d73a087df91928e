from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.turns.stages import AFTER, TIMINGS_LOGGER, Stages, logged_stages, parse_header, timed_after


def test_laps_split_and_header_round_trip() -> None:
    stages = Stages()
    stages.lap("parse")
    stages.lap("store")
    whole = stages.laps["store"]
    stages.split("store", {"ingest": whole // 2, "assemble": 0})
    assert list(stages.laps) == ["parse", "ingest", "assemble", "store"]
    assert stages.laps["ingest"] + stages.laps["assemble"] + stages.laps["store"] == whole
    parsed = parse_header(stages.header())
    assert list(parsed) == ["parse", "ingest", "assemble", "store"]
    assert all(value >= 0 for value in parsed.values())


def test_a_split_larger_than_its_lap_leaves_no_negative_rest() -> None:
    stages = Stages()
    stages.lap("store")
    stages.split("store", {"ingest": stages.laps["store"] + 5_000})
    assert stages.laps["store"] == 0 and stages.laps["ingest"] > 0


def test_parse_header_ignores_what_it_does_not_know() -> None:
    assert parse_header('db;desc="x";dur=1.5, cache, total;dur=bad, ;dur=2') == {"db": 1500.0}
    assert parse_header("") == {}


@pytest.mark.anyio
async def test_timed_after_adds_the_after_stage_and_logs_the_turns_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=TIMINGS_LOGGER)
    stages = Stages()
    stages.lap("parse")
    ran: list[bool] = []

    async def work() -> None:
        await asyncio.sleep(0.002)
        ran.append(True)

    await timed_after(work, stages)()
    assert ran and list(stages.laps) == ["parse", AFTER] and stages.laps[AFTER] >= 2_000_000
    (line,) = [r for r in caplog.records if r.name == TIMINGS_LOGGER]
    assert parse_header(line.getMessage()) == parse_header(stages.header())


def test_logged_stages_reads_a_timings_line_as_the_cli_formats_it() -> None:
    line = "2026-12-07 21:00:00,123 INFO clawvm.timings: parse;dur=0.250, upstream;dur=2.000, after;dur=1.500"
    assert logged_stages(line) == {"parse": 250.0, "upstream": 2000.0, AFTER: 1500.0}
    assert logged_stages("2026-12-07 21:00:00,123 WARNING clawvm.gateway: parse;dur=0.250") is None
    assert logged_stages("") is None


def test_add_records_time_measured_apart_from_the_laps() -> None:
    stages = Stages()
    stages.lap("parse")
    stages.add("commit", 3_000)
    stages.add("commit", 2_000)
    assert stages.laps["commit"] == 5_000 and list(stages.laps) == ["parse", "commit"]
