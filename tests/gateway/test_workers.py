from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.settings import ConfigError, Overrides, load_settings
from gateway.workers import SPEC_ENV, Source, spec, usable_cpus, worker_board, worker_count, worker_settings


def test_workers_default_to_one_per_cpu_and_the_flag_wins(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  workers: 3\n")
    assert worker_count(load_settings(None, {}), 4) == 4
    assert worker_count(load_settings(None, {}), None) == 1
    assert worker_count(load_settings(config, {}), 4) == 3
    assert worker_count(load_settings(config, {}, Overrides(workers=2)), 4) == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_names_the_key(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  workers: {value}\n")
    with pytest.raises(ConfigError, match="server.workers"):
        load_settings(config, {})


def test_a_worker_loads_the_parents_settings_with_the_shared_store(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("upstream:\n  api_key: sk-upstream-secret\nserver:\n  log_content: true\n")
    overrides = Overrides(port=4100, budget=5000, workers=2)
    encoded = spec(Source(config, overrides), "redis://127.0.0.1:7001/0", "debug", 4242)
    assert "sk-upstream-secret" not in encoded  # the worker reads the secret from the config itself
    settings, level = worker_settings({SPEC_ENV: encoded})
    parent = load_settings(config, {}, overrides)
    assert level == "debug" and settings.store.url == "redis://127.0.0.1:7001/0"
    assert settings.server == parent.server and settings.upstream == parent.upstream
    assert json.loads(encoded)["parent"] == 4242
    assert json.loads(spec(Source(), None, "info", 1))["overrides"]["store"] is None


def test_a_worker_finds_the_versions_board_of_its_parents_embedded_store(tmp_path: Path) -> None:
    board = tmp_path / "data" / "versions.board"
    assert worker_board({SPEC_ENV: spec(Source(), "redis://127.0.0.1:7001/0", "info", 1, board)}) == board
    assert worker_board({SPEC_ENV: spec(Source(), "redis://127.0.0.1:7001/0", "info", 1)}) is None  # a store of its own


def test_usable_cpus_counts_what_this_process_may_run_on() -> None:
    cpus = usable_cpus()
    assert cpus is not None and 1 <= cpus <= (os.cpu_count() or cpus)
