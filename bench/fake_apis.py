"""The three fake upstreams in one server: Chat Completions (`bench.fake_upstream`), Anthropic
Messages (`bench.fake_anthropic`) and OpenAI Responses (`bench.fake_responses`).

`python -m bench.fake_apis --port 8000` serves `/v1/chat/completions`, `/v1/models`,
`/v1/embeddings`, `/v1/messages`, `/v1/messages/count_tokens`, `/v1/responses` and
`/v1/responses/compact`; point a gateway's `upstream.api_base` at `http://HOST:PORT/v1` and its
`upstream.anthropic_base` at `http://HOST:PORT`. Every answer is the fakes' default ("ok").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from bench.fake_anthropic import FakeAnthropic
from bench.fake_responses import FakeResponses
from bench.fake_upstream import FakeUpstream


def app(chat: FakeUpstream, messages: FakeAnthropic, responses: FakeResponses) -> Starlette:
    """One app answering each format's routes; anything else as the chat fake does (404)."""
    own = [route for fake in (messages, responses) for route in fake.app.routes[:-1]]  # not their catch-all
    return Starlette(routes=[*own, *chat.app.routes])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve fake Chat Completions, Messages and Responses APIs.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    served = app(FakeUpstream(), FakeAnthropic(), FakeResponses())
    print(f"fake APIs on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(served, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
