"""Wire formats as adapters (issue 14): one module per API a client speaks.

`base` defines the interface (`Wire`, `Answer`), `loop` the one recall loop every format uses,
streaming or not, and `recall` the recall tool it resolves from the store; `chat` (Chat
Completions, with `chat_json` parsing and rendering its messages and `chat_fields` typing its
fields), `messages` (Anthropic Messages) and `responses` (OpenAI Responses, with `chains`
resolving `previous_response_id`) implement it. Nothing outside an adapter knows a format's
field names.
"""
