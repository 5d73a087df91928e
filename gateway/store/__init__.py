"""What the gateway keeps: the Redis (or Redis Cluster) store and the embedded server, the page
tables' stored format and per-session state, the write-back memory and its journal, and the
queue of turns deferred while the store is unavailable."""
