"""One turn through the gateway: the services a request uses (`services`, wired once per process),
the turn itself (`pipeline`: load, step, commit, forward, relay), its timing (`stages`), the
identity of its user, session and project (`sessions`) and a session's first request
(`boundary`)."""
