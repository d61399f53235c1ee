"""A load client that is not the bottleneck: raw HTTP/1.1 keep-alive over asyncio streams (no HTTP
library), N connections each sending one request after another. `python -m loadtest.rawclient ...`
prints one JSON line: requests, errors, req/s and latency percentiles."""
from __future__ import annotations

import argparse
import asyncio
import json
import time


def request_bytes(path: str, body: bytes, host: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one_connection(host: str, port: int, payload: bytes, until: float, latencies: list[float],
                         statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def hammer(host: str, port: int, path: str, body: bytes, connections: int, seconds: float,
                 warmup: float = 1.0, latencies_out: str | None = None) -> dict:
    payload = request_bytes(path, body, f"{host}:{port}")
    await asyncio.gather(*[one_connection(host, port, payload, time.perf_counter() + warmup, [], {})
                           for _ in range(connections)])
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(*[one_connection(host, port, payload, started + seconds, latencies, statuses)
                           for _ in range(connections)])
    elapsed = time.perf_counter() - started
    if latencies_out:  # for merging several client processes' percentiles
        with open(latencies_out, "w") as f:
            json.dump(latencies, f)
    lat = sorted(latencies)
    pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None)
    return {"requests": len(lat), "statuses": statuses, "seconds": round(elapsed, 2),
            "req_per_s": round(len(lat) / elapsed, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/classify")
    parser.add_argument("--body", required=True, help="request body (JSON text)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--latencies-out", help="also write every latency (seconds) to this JSON file")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(hammer("127.0.0.1", args.port, args.path, args.body.encode(), args.connections,
                                        args.seconds, args.warmup, args.latencies_out))))


if __name__ == "__main__":
    main()
