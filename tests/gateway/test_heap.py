"""The serving process's garbage collector (gateway.heap), checked in a process of its own: a
test must not change the collector of the test run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway import cli, workers
from gateway.heap import FULL_COLLECTION_AFTER
from gateway.settings import Overrides, Settings, load_settings
from gateway.upstream import tokens


def _run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_settling_freezes_the_start_up_heap_and_keeps_collecting_young_cycles() -> None:
    found = _run(
        """
        import gc, json, weakref
        from gateway.heap import settle
        before = gc.get_threshold()
        settle()
        frozen = gc.get_freeze_count()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after start-up: garbage once dropped
        gone = weakref.ref(a)
        del a, b
        gc.collect(0)  # a young collection is enough
        print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen, "freed": gone() is None}))
        """
    )
    young, middle, _ = found["before"]  # type: ignore[misc]
    assert found["after"] == [young, middle, FULL_COLLECTION_AFTER]
    assert isinstance(found["frozen"], int) and found["frozen"] > 1000  # the interpreter and its imports
    assert found["freed"] is True


def test_the_served_app_settles_once_started_and_a_test_app_does_not(redis_url: str) -> None:
    found = _run(
        f"""
        import asyncio, gc, json
        from gateway.api.app import create_app
        from gateway.settings import Overrides, load_settings

        settings = load_settings(None, {{}}, Overrides(store={redis_url!r}, upstream="http://127.0.0.1:9/v1"))

        async def started(serving):
            app = create_app(settings, serving=serving)
            async with app.router.lifespan_context(app):
                return gc.get_freeze_count(), gc.get_threshold()[2]

        plain = asyncio.run(started(False))
        served = asyncio.run(started(True))
        print(json.dumps({{"plain": plain, "served": served}}))
        """
    )
    assert found["plain"] == [0, 10]  # CPython's defaults, untouched
    frozen, full_after = found["served"]  # type: ignore[misc]
    assert frozen > 1000 and full_after == FULL_COLLECTION_AFTER


def test_clawvm_serve_and_its_workers_serve_a_settling_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """`clawvm serve`'s one process, and each worker uvicorn's factory makes, ask for it."""
    import uvicorn

    import gateway.api.app as app_module

    made: list[bool] = []

    def create_app(settings: Settings, board: Path | None = None, *, serving: bool = False) -> str:
        made.append(serving)
        return "app"

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli, "configure_logging", lambda settings, level: None)
    monkeypatch.setattr(workers, "die_with_parent", lambda parent: None)
    monkeypatch.setattr(tokens, "prepare_offline", lambda env: None)  # it writes os.environ
    settings = load_settings(None, {}, Overrides(workers=1, store="redis://127.0.0.1:9/0"))
    cli.serve(settings, "warning")
    monkeypatch.setenv(workers.SPEC_ENV, workers.spec(workers.Source(), "redis://127.0.0.1:9/0", "warning", 1))
    workers.app()
    assert made == [True, True]
