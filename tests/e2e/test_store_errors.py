"""Redis errors that are not connection failures (issue 11, item 8): a read-only replica after a
failover (READONLY), maxmemory reached with noeviction (OOM), a long script (BUSY), too few
replicas (NOREPLICAS). Each is produced for real on a redis-server of the test's own; the
gateway serves the turn degraded (200, `x-clawvm-degraded`), never a 500, says so on /ready,
and once Redis accepts writes again the queued turn is committed: a fresh reader of the store
and the audit API both see it. LOADING, TRYAGAIN, CLUSTERDOWN and MASTERDOWN are converted by the
same code (tests/gateway/store/test_store.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from gateway.store.embedded import EmbeddedRedis, free_port
from tests.e2e.conftest import Gateway
from tests.e2e.test_store_outage import DEGRADED, WAIT_S, ask, drained, outage_gateway, probe, stored_order

__all__ = ["outage_gateway"]  # the fixture, shared with test_store_outage

AUTH = {"authorization": "Bearer sk-test"}


def _readonly(client: redis.Redis) -> Callable[[], None]:
    client.replicaof("127.0.0.1", free_port())  # a master nobody listens on: read-only, stale reads served
    return lambda: client.replicaof("NO", "ONE")


def _oom(client: redis.Redis) -> Callable[[], None]:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    return lambda: client.config_set("maxmemory", "0")


def _noreplicas(client: redis.Redis) -> Callable[[], None]:
    client.config_set("min-replicas-to-write", "1")
    return lambda: client.config_set("min-replicas-to-write", "0")


REFUSALS = {"READONLY": _readonly, "OOM": _oom, "NOREPLICAS": _noreplicas}


@contextlib.contextmanager
def busy_script(url: str) -> Iterator[None]:
    """A script looping on another connection, past the busy threshold, until SCRIPT KILL."""
    admin = redis.Redis.from_url(url)
    admin.config_set("lua-time-limit", "50")  # busy-reply-threshold on Redis 7+

    def loop() -> None:
        with redis.Redis.from_url(url) as looping, contextlib.suppress(redis.ResponseError):
            looping.eval("while true do end", 0)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                admin.ping()
            except redis.ResponseError:  # BUSY: the script is past the threshold
                break
            time.sleep(0.02)
        yield
    finally:
        admin.script_kill()
        thread.join()
        admin.close()


def session_api(gw: Gateway, session: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/clawvm/sessions/{session}", headers=AUTH)


def assert_committed_after_recovery(gw: Gateway, url: str, session: str) -> None:
    assert drained(gw) == {"status": "ok", "store": "ok", "queued": 0}
    assert probe(gw, "/ready")[0] == 200
    reference = f"{session}-reference"
    for turns in (1, 2):
        ask(gw, reference, turns)
    assert stored_order(url, session) == stored_order(url, reference)  # the deferred turn 2, as stored
    answer = session_api(gw, session)
    assert answer.status_code == 200 and answer.json()["turn"] == 2


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_a_redis_refusing_writes_serves_turns_degraded_then_commits_them(
    outage_gateway, killable: EmbeddedRedis, code: str
) -> None:
    session = f"refused-{code.lower()}"
    with outage_gateway() as gw, redis.Redis.from_url(killable.url) as admin:
        assert DEGRADED not in ask(gw, session, 1)
        recover = REFUSALS[code](admin)
        try:
            assert ask(gw, session, 2)[DEGRADED] == "store_unavailable"  # 200: ask checks the status
            assert ask(gw, f"{session}-stream", 1, stream=True)[DEGRADED] == "store_unavailable"
            assert probe(gw, "/ready") == (503, {"status": "not_ready", "store": "unavailable", "queued": 2})
            assert probe(gw, "/health")[1]["status"] == "degraded"
            time.sleep(0.3)  # the drain task retries meanwhile: nothing is dropped while writes fail
            assert probe(gw, "/health")[1]["queued"] == 2
        finally:
            recover()
        assert_committed_after_recovery(gw, killable.url, session)
        events = httpx.get(f"{gw.url}/clawvm/sessions/{session}/events", headers=AUTH).json()["data"]
        assert [e["evidence"] for e in events if e.get("kind") == "store"] == [
            f"commit: {code}"
        ]  # the write-back commits with the table


def test_a_busy_script_serves_turns_degraded_and_the_audit_api_answers_503(
    outage_gateway, killable: EmbeddedRedis
) -> None:
    with outage_gateway() as gw:
        assert DEGRADED not in ask(gw, "busy", 1)
        page_id = session_api(gw, "busy").json()["pages"][0]["id"]
        with busy_script(killable.url):
            assert ask(gw, "busy", 2)[DEGRADED] == "store_unavailable"
            assert probe(gw, "/health") == (200, {"status": "degraded", "store": "unavailable", "queued": 1})
            for path in ("", "/events", "/decisions", "/journal"):
                answer = httpx.get(f"{gw.url}/clawvm/sessions/busy-other{path}", headers=AUTH)
                assert answer.status_code == 503, path
                error = answer.json()["error"]
                assert error["type"] == "api_error" and error["code"] == "backend_error"
                assert "BUSY" in error["message"] and "127.0.0.1" not in error["message"]
            page = httpx.get(f"{gw.url}/clawvm/pages/{page_id}", params={"session": "busy"}, headers=AUTH)
            assert page.status_code == 503 and page.json()["error"]["code"] == "backend_error"
        assert_committed_after_recovery(gw, killable.url, "busy")


def test_a_503_from_the_store_does_not_quote_its_host_or_port(outage_gateway, killable: EmbeddedRedis) -> None:
    port = killable.url.rsplit(":", 1)[1].split("/")[0]
    with outage_gateway() as gw:
        ask(gw, "quiet", 1)
        killable.kill()
        for path in ("/clawvm/sessions/never-seen", "/clawvm/sessions/never-seen/events"):
            answer = httpx.get(gw.url + path, headers=AUTH)
            assert answer.status_code == 503
            message = answer.json()["error"]["message"]
            assert "127.0.0.1" not in message and port not in message and "Error" not in message
        killable.start()
