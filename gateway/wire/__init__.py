"""Wire formats as adapters (issue 14): one module per API a client speaks.

`base` defines the interface (`Wire`, `Answer`, `Names`: the ids and boundary event a body names),
`loop` the one recall loop every format uses, streaming or not, and `recall` the recall tool it
resolves from the store. `chat` (Chat Completions: `chat_json` parses and renders its messages,
`chat_fields` types its fields, `chat_transcripts` keeps parsed transcripts between turns,
`chat_tokens` counts a `messages` array, `chat_litellm` and `chat_litellm_params` are its route
through litellm to providers that do not speak OpenAI), `messages` (Anthropic Messages) and
`responses` (OpenAI Responses; `chains` resolves `previous_response_id`) implement it.
`account_refs` finds the upstream-account objects a body of any format names. Nothing outside
`gateway.wire` knows a format's field names (`tests/gateway/test_layering.py`).
"""
