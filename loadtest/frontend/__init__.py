"""The serving front end's CPU cost, with the forward pass made (nearly) free. One tool,
`python -m loadtest.frontend MODE` (see __main__.py): `proxy` (proxy.py: req/s against a null server over
HTTP), `asgi` (asgi_cost.py: the app called as ASGI, CPU µs per request) and `engine-cpu` (engine_cpu.py:
the engine process's CPU per request under `--workers N`); stub_serve.py is `dhrd serve` with its forward
pass stubbed, which they start."""
