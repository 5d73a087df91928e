from __future__ import annotations

from gateway.turns.stages import Stages, parse_header


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
