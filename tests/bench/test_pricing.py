"""bench.pricing: the two price models of provider prompt caching, in uncached-token units."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.pricing import CACHE_MIN, CACHE_STEP, anthropic_cost, cached, openai_cost, price, ratio


@pytest.mark.parametrize(
    ("prefix", "tokens", "hit"),
    [
        (0, 5000, 0),
        (1023, 5000, 0),  # below the minimum nothing is cached
        (1024, 5000, 1024),
        (1151, 5000, 1024),  # rounded down to a 128-token step
        (1152, 5000, 1152),
        (9000, 5000, 4992),  # never more than the prompt
        (-5, 5000, 0),
    ],
)
def test_the_cached_part_is_the_prefix_in_128_token_steps_from_1024(prefix: int, tokens: int, hit: int) -> None:
    assert cached(prefix, tokens) == hit


def test_openai_reads_at_a_tenth_and_anthropic_writes_the_rest_at_one_and_a_quarter() -> None:
    assert openai_cost(0, 2000) == 2000
    assert anthropic_cost(0, 2000) == 2500
    assert openai_cost(1920, 2000) == pytest.approx(80 + 192)
    assert anthropic_cost(1920, 2000) == pytest.approx(1.25 * 80 + 192)
    assert price(1920, 2000).openai == openai_cost(1920, 2000)


def test_a_ratio_against_nothing_is_no_measurement() -> None:
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(50.0, 0.0) is None


@given(st.integers(0, 200_000), st.integers(0, 200_000))
def test_a_longer_shared_prefix_never_costs_more(prefix: int, tokens: int) -> None:
    longer = prefix + CACHE_STEP
    assert openai_cost(longer, tokens) <= openai_cost(prefix, tokens) <= tokens
    assert anthropic_cost(longer, tokens) <= anthropic_cost(prefix, tokens) <= 1.25 * tokens
    if tokens >= CACHE_MIN and prefix >= tokens:
        assert openai_cost(prefix, tokens) <= 0.1 * tokens + CACHE_STEP
