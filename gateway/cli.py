"""`clawvm serve`: start the gateway. Flags map onto config.yaml's settings and win over them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gateway.settings import ConfigError, Overrides, Settings, load_settings
from gateway.store.board import BOARD_NAME, made
from gateway.store.embedded import EmbeddedRedis
from gateway.turns.stages import TIMINGS_LOGGER
from gateway.upstream.tokens import prepare_offline
from gateway.workers import FACTORY, SPEC_ENV, Source, spec, usable_cpus, worker_count

GRACEFUL_SHUTDOWN_S = 30
# Libraries whose DEBUG records quote request bodies (messages, tool output): held at INFO unless
# server.log_content is true, so `--log-level debug` alone never writes message text to the logs.
CONTENT_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "openai", "openai._base_client")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="clawvm", description="ClawVM Gateway: harness-managed virtual memory for LLM agents."
    )
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", type=Path, default=None, help="config.yaml (default: none; an open local setup)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 4000)")
    serve.add_argument("--upstream", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    serve.add_argument("--budget", type=int, default=None, help="the default tenant's max prompt tokens")
    serve.add_argument("--store", default=None, help="'embedded' (default) or a redis:// URL")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve with no tenants (every caller let in) on a non-loopback host; refused without it",
    )
    serve.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: server.workers, else one per CPU)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = Overrides(
        host=args.host,
        port=args.port,
        upstream=args.upstream,
        budget=args.budget,
        store=args.store,
        allow_unauthenticated=args.allow_unauthenticated,
        workers=args.workers,
    )
    try:
        settings = load_settings(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"clawvm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    prepare_offline(os.environ)
    serve(settings, args.log_level, Source(args.config, overrides))
    return 0


def serve(settings: Settings, log_level: str, source: Source | None = None) -> None:
    """One process serving the app, or (more than one worker) uvicorn's supervisor over workers
    that share the embedded Redis this process starts (gateway.workers)."""
    import uvicorn

    from gateway.api.app import create_app
    from gateway.api.protocol import ReadAhead

    configure_logging(settings, log_level)
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_level": log_level,
        "access_log": False,
        "http": ReadAhead,  # a request body read ahead, handed to the app whole (gateway.api.protocol)
        "h11_max_incomplete_event_size": settings.server.max_header_bytes,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }
    workers = worker_count(settings, usable_cpus())
    if workers == 1:
        uvicorn.run(create_app(settings, serving=True), **options)
        return
    with ExitStack() as stack:
        store_url, board = None, None
        if settings.store.embedded:  # the workers are its only writers: they share a versions board
            redis = EmbeddedRedis(settings.store.data_dir, appendfsync=settings.store.appendfsync)
            store_url = stack.enter_context(redis)
            board = made(settings.store.data_dir / BOARD_NAME)
        os.environ[SPEC_ENV] = spec(source or Source(), store_url, log_level, os.getpid(), board)
        uvicorn.run(FACTORY, factory=True, workers=workers, **options)


def configure_logging(settings: Settings, log_level: str) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_content_loggers(settings.server.log_content)
    if settings.server.log_timings:  # a turn's timings line is asked for whatever the log level
        logging.getLogger(TIMINGS_LOGGER).setLevel(logging.INFO)


def quiet_content_loggers(log_content: bool) -> None:
    """Unless content logging is on: hold the loggers that would quote message text at INFO, and
    log exceptions without their message, which may quote a request: those uvicorn reports (a
    bug's, re-raised after its 500 was sent) and every one written by the root handlers."""
    if log_content:
        return
    for name in CONTENT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
    logging.getLogger("uvicorn.error").addFilter(ExceptionsWithoutMessages())
    for handler in logging.getLogger().handlers:
        handler.addFilter(ExceptionsWithoutMessages())


class ExceptionsWithoutMessages(logging.Filter):
    """Replaces a record's exception by its type and traceback frames, without its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = "".join(traceback.format_tb(exc.__traceback__))
            record.msg = f"{record.getMessage()}: {type(exc).__name__}\n{frames}".rstrip()
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


if __name__ == "__main__":
    sys.exit(main())
