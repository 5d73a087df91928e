"""The I/O edge, one package per axis of variation: `api` (the HTTP surface), `wire` (the API
a client speaks), `turns` (one turn, end to end), `store` (what is kept), `upstream` (the model
provider) and `observability` (what is recorded); `settings`, `cli` and `workers` start it."""
