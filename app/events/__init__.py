"""Event delivery: the wake-up bus (in-process, and Postgres LISTEN/NOTIFY) and the shared
per-run feeds that SSE streams read from (``feed``), served by the process's ``hub``."""
