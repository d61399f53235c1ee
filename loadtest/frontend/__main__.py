"""Front-end CPU cost, one mode each (`python -m loadtest.frontend MODE --help` for its flags):

    python -m loadtest.frontend proxy --stub-forward          # /classify vs a null server; loadtest/results/frontend/
    python -m loadtest.frontend asgi --rounds 5               # ASGI, no network: loadtest/results/asgi-cost/
    python -m loadtest.frontend engine-cpu --workers 2 --stub-forward   # the engine process's CPU per request
"""
from __future__ import annotations

from loadtest.modes import dispatch

MODES = {
    "proxy": ("loadtest.frontend.proxy", "/classify req/s with a tiny model next to a null server, same raw client"),
    "asgi": ("loadtest.frontend.asgi_cost", "a request's Python cost in the front end, called as ASGI (CPU µs)"),
    "engine-cpu": ("loadtest.frontend.engine_cpu", "the engine process's CPU per request under dhrd serve --workers N"),
}

if __name__ == "__main__":
    raise SystemExit(dispatch("loadtest.frontend", __doc__, MODES))
