"""A /classify request's Python cost in the front end, without a network or a forward pass: the app is
called directly as ASGI (no uvicorn, no client on the machine) with the forward pass stubbed out, and
the CPU time of the process is divided by the requests. Three ways, interleaved over rounds so a
drifting VM affects each alike:

- `route`: every request through FastAPI's route (`--no-fast-path`);
- `fast-path`: the service as shipped (service/http/fast_path.py);
- `work-only`: `ServedModel.classify` called directly, no HTTP layer at all (tokenising, admission, the
  queue round trip, the answer's objects): the floor that a leaner HTTP layer could reach.

    .venv/bin/python -m loadtest.frontend asgi                   # writes loadtest/results/asgi-cost/
    .venv/bin/python -m loadtest.frontend asgi --rounds 5 --requests 6400

The HTTP parsing uvicorn does (httptools) is not counted here; `loadtest.frontend proxy` measures the whole
server against a null one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from .. import REPO
from ..provenance import report_header

EXPORT = REPO / "tests" / "fixtures" / "export-v1-cb"
FIELDS = {"premise": "It rained all day and the streets were wet.", "hypothesis": "The ground got wet."}
BODY = json.dumps({"model": "cb", "input": FIELDS}).encode()
MODES = ("route", "fast-path", "work-only")


def scope_for(app) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/classify", "raw_path": b"/classify", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}


async def post(app) -> None:
    """One request as uvicorn would hand it over: the whole body in one message, then no disconnect."""
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]

    async def receive():
        return messages.pop() if messages else await asyncio.Event().wait()

    started = []

    async def send(message):
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await app(scope_for(app), receive, send)
    if started != [200]:
        raise RuntimeError(f"/classify answered {started}")


async def direct(app) -> None:
    from service.engine.served import InputOptions

    served = app.state.dhrd.model("cb")
    await served.classify([FIELDS], InputOptions(), time.monotonic() + 30)


async def serve_stubbed(fast_path: bool):
    """A started app whose forward pass returns fixed probabilities at once (the front end's cost alone)."""
    from service.http.app import create_app
    from service.settings import Settings

    from . import stub_serve  # noqa: F401  (importing it stubs the forward pass, before any runner exists)

    app = create_app(Settings(models={"cb": EXPORT}, verify_hashes=False, fast_path=fast_path,
                              max_batch_size=64, max_batch_tokens=8192))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    while not app.state.dhrd.ready:
        if app.state.dhrd.load_error:
            raise RuntimeError(app.state.dhrd.load_error)
        await asyncio.sleep(0.05)
    return app, lifespan


async def measure(fn, app, requests: int, concurrency: int) -> float:
    """CPU µs per request (the whole process: event loop and torch thread) at `concurrency` in flight."""
    async def client(n: int) -> None:
        for _ in range(n):
            await fn(app)

    await asyncio.gather(*(client(max(1, requests // (10 * concurrency))) for _ in range(concurrency)))  # warm
    cpu = time.process_time()
    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
    return 1e6 * (time.process_time() - cpu) / (requests // concurrency * concurrency)


async def run(rounds: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    route, route_life = await serve_stubbed(fast_path=False)
    fast, fast_life = await serve_stubbed(fast_path=True)
    runs = {"route": (post, route), "fast-path": (post, fast), "work-only": (direct, fast)}
    found: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for r in range(rounds):
            for mode in MODES:
                fn, app = runs[mode]
                found[mode].append(round(await measure(fn, app, requests, concurrency), 1))
            print(f"[asgi-cost] round {r + 1}: " + ", ".join(f"{m} {found[m][-1]:.0f} µs" for m in MODES), flush=True)
    finally:
        await fast_life.__aexit__(None, None, None)
        await route_life.__aexit__(None, None, None)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6400, help="per mode and round")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (as the load client's 32)")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "asgi-cost")
    args = parser.parse_args(argv)
    found = asyncio.run(run(args.rounds, args.requests, args.concurrency))
    medians = {mode: statistics.median(v) for mode, v in found.items()}
    report = {**report_header(), "export": str(EXPORT.relative_to(REPO)),
              "requests_per_round": args.requests, "concurrency": args.concurrency,
              "cpu_us_per_request": found, "median_cpu_us_per_request": medians,
              "http_layer_us": {"route": round(medians["route"] - medians["work-only"], 1),
                                "fast-path": round(medians["fast-path"] - medians["work-only"], 1)}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d-%H%M')}-{report['machine']['node']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_cpu_us_per_request", "http_layer_us")}))
    print(f"[asgi-cost] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
