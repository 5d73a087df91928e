"""Wire formats as adapters (issue 14): one module per API a client speaks.

`base` defines the interface (`Wire`, `Answer`), `loop` the one recall loop every format uses,
streaming or not, and `recall` the recall tool it resolves from the store. `chat` (Chat
Completions: `chat_json` parses and renders its messages, `chat_fields` types its fields,
`chat_transcripts` keeps parsed transcripts between turns), `messages` (Anthropic Messages) and
`responses` (OpenAI Responses; `chains` resolves `previous_response_id`) implement it. Nothing
outside an adapter knows a format's field names.
"""
