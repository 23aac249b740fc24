"""The HTTP API: routers, request guards and the mapping of errors to problem+json."""
