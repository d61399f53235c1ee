"""How `dhrd serve` holds up, not how fast it is. One tool, `python -m loadtest.reliability MODE` (see
__main__.py): `soak` (overload with faults mixed in, stalls, SIGTERM under load), `startup` (time to /ready,
cold and with warm caches) and `stuck-front-end` (a front end whose event loop stops, under --workers 2)."""
