"""Event delivery: the wake-up bus (in-process, and Postgres LISTEN/NOTIFY) and SSE."""
