"""The running proxy: the ASGI app, auth, routes, the upstream client, the SSE relay and the wiring."""
