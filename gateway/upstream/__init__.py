"""Calls to the model provider: the upstream clients (`client`: the aiohttp passthrough and
litellm), where a tenant's request goes and with which key (`targets`), retries, SSE framing,
what of a client's body may reach the provider (`provider_params`, `account_refs`), and what the
gateway knows offline about a model (its context window, `models`; its tokenizer, `tokens`)."""
