"""Wire formats as adapters (issue 14): one module per API a client speaks.

`base` defines the interface (`Wire`, `Answer`), `loop` the one recall loop every format uses,
streaming or not; `chat` (Chat Completions), `messages` (Anthropic Messages) and `responses`
(OpenAI Responses) implement it. Nothing outside an adapter knows a format's field names.
"""
