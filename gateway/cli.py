"""`clawvm serve`: start the gateway. Flags map onto config.yaml's settings and win over them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.settings import ConfigError, Overrides, Settings, load_settings
from gateway.tokens import prepare_offline

GRACEFUL_SHUTDOWN_S = 30


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
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = Overrides(host=args.host, port=args.port, upstream=args.upstream, budget=args.budget, store=args.store)
    try:
        settings = load_settings(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"clawvm: invalid configuration: {exc}", file=sys.stderr)
        return 2
    prepare_offline(os.environ)
    serve(settings, args.log_level)
    return 0


def serve(settings: Settings, log_level: str) -> None:
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level,
        access_log=False,
        h11_max_incomplete_event_size=settings.server.max_header_bytes,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    sys.exit(main())
