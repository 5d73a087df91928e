"""Calls to the model provider: the upstream client (`client`: the aiohttp passthrough, relayed and
forwarded headers, secrets redacted), where a tenant's request goes and with which key (`targets`),
retries, SSE framing, and what the gateway knows offline about a model (its context window,
`models`; its tokenizer, `tokens`). Nothing here knows a wire format's fields: the chat adapter's
litellm route and what of a body may reach a provider live in `gateway.wire`."""
