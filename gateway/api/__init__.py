"""The HTTP surface: the Starlette app and its routes, the error shapes, the audit, page and
inspector APIs, the Messages and Responses side routes and the untouched relay; the API key's
tenant (`auth`), per-tenant concurrency limits (`limits`), and bounded bodies and relayed
answers (`http`)."""
