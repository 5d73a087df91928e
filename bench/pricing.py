"""What a prompt costs with provider prompt caching, in units of one uncached input token. Pure.

The formula of `/work/shared/reference/caching.md`, the same everywhere in the bench: for each
upstream request of a session, in order (recall follow-ups included), `prefix` is the tokens of its
longest common prefix with the previous request of that session (tools, then the messages in
order) and `tokens` its prompt tokens. The cached part `C` is `prefix` rounded down to a multiple of
CACHE_STEP when it reaches CACHE_MIN tokens, else nothing.

- OpenAI (GPT-5 family, free writes): `(tokens - C) + READ * C`;
- Anthropic (5-minute cache): the part not read from the cache is written, `WRITE * (tokens - C) + READ * C`.

A session's first request has no previous one: nothing is cached, everything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

CACHE_MIN = 1024  # OpenAI caches prompts of at least this many tokens (Anthropic's smallest minimum)
CACHE_STEP = 128  # cache hits come in steps of this many tokens
READ = 0.1  # a cached token, against one uncached input token
WRITE = 1.25  # Anthropic's 5-minute cache write


def cached(prefix: int, tokens: int) -> int:
    """The part of a `tokens`-token prompt read from the cache when its first `prefix` tokens
    equal the previous request's."""
    shared = min(max(prefix, 0), max(tokens, 0))
    return shared // CACHE_STEP * CACHE_STEP if shared >= CACHE_MIN else 0


def openai_cost(prefix: int, tokens: int) -> float:
    hit = cached(prefix, tokens)
    return (tokens - hit) + READ * hit


def anthropic_cost(prefix: int, tokens: int) -> float:
    hit = cached(prefix, tokens)
    return WRITE * (tokens - hit) + READ * hit


@dataclass(frozen=True, slots=True)
class Price:
    """One request's input cost under both models."""

    openai: float
    anthropic: float


def price(prefix: int, tokens: int) -> Price:
    return Price(openai_cost(prefix, tokens), anthropic_cost(prefix, tokens))


def ratio(cost: float, direct: float) -> float | None:
    """A cost against sending everything (None when direct cost nothing: no measurement)."""
    return round(cost / direct, 4) if direct > 0 else None
