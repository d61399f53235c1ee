"""What `dhrd serve` exits with, one code per cause, so an orchestrator (or a person reading `kubectl
describe`) can tell a port clash from a dead accelerator without reading the log. DEPLOY.md lists them."""
from __future__ import annotations

OK = 0  # stopped by a signal (SIGTERM, SIGINT, SIGHUP) after draining; one process: 143, uvicorn re-raising SIGTERM
CHILD_DIED = 1  # --workers: the engine process died, or front ends kept dying (a crash loop)
BAD_CONFIG = 2  # a setting or an export refused before anything started (the message names it)
PORT_UNAVAILABLE = 3  # the address could not be bound: in use, or not on this machine (uvicorn's own code)
DEVICE_FAILED = 4  # a fatal accelerator error: the device context is dead; restart, maybe on another node
