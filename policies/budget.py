"""How many tokens a request may carry: from the tenant's budget and the model's window."""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.tenant import Budget


@dataclass(frozen=True, slots=True)
class TokenBudget:
    cap: int  # the prompt-token ceiling the tenant asked for (what headers report)
    usable: int  # what the messages may use: cap less the safety margin and the tool schemas
    hard_limit: int  # what the model itself accepts: its window less the output reserve
    source: str  # "tenant_budget" | "window_fraction:<window source>" | "model_map" | "config" | "default"
    tools: int = 0  # tokens of the request's tool schemas, counted against the cap


def resolve_budget(budget: Budget, window: int, window_source: str, tools_tokens: int) -> TokenBudget:
    """Combine the tenant budget with the model window (`window_source` says where it came from).

    A known window caps the budget; a guessed one ("default", for models the map does not know)
    does not override an explicit tenant budget.
    """
    hard_limit = max(window - budget.output_reserve, 0)
    if budget.max_prompt_tokens is not None:
        cap, source = budget.max_prompt_tokens, "tenant_budget"
    elif budget.window_fraction is not None:
        cap, source = math.floor(window * budget.window_fraction), f"window_fraction:{window_source}"
    else:
        cap, source = hard_limit, window_source
    if window_source != "default":
        cap = min(cap, hard_limit)
    usable = math.floor(cap * (1.0 - budget.safety_margin)) - tools_tokens
    return TokenBudget(cap=cap, usable=max(usable, 0), hard_limit=hard_limit, source=source, tools=tools_tokens)
