"""The I/O edge: HTTP app, store, upstream, settings, CLI."""
