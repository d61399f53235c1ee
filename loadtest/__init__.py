"""Load tests of the DHRD service, grouped by what they measure; each group is one command:

    python -m loadtest.bench          the performance report of BENCHMARKS.md (Locust over every scenario)
    python -m loadtest.forward MODE   forward passes alone: profile | packing | attention | roofline
    python -m loadtest.frontend MODE  the front end's CPU cost: proxy | asgi | engine-cpu
    python -m loadtest.reliability MODE   soak | startup | stuck-front-end
    python -m loadtest.gpu --plan     the GPU kit: two bounded calls of the device `run` tool

Shared by them, here: provenance.py (every result's header), servers.py (start, probe and stop servers),
rawclient.py (the raw keep-alive load client), null_server.py (the front end's ceiling), setup_peer.sh
(the infinity-emb peer); assets/ (SmolLM2's tokenizer, for the GPU kit); results/ (what the runs wrote).
"""
from pathlib import Path

# The checkout (an editable install): the locustfile, the peer's venv and the results folder live there.
REPO = Path(__file__).resolve().parents[1]
