"""Read Locust's CSV stats and the service's Prometheus counters into one level's numbers."""
from __future__ import annotations

import csv

SCRAPED = ("dhrd_batch_size_sum", "dhrd_batch_size_count", "dhrd_cot_generated_tokens_total",
           "dhrd_inference_duration_seconds_sum", "dhrd_queue_wait_seconds_sum", "dhrd_queue_wait_seconds_count",
           "dhrd_request_duration_seconds_sum", "dhrd_request_duration_seconds_count", "dhrd_input_tokens_total")


def locust_stats(stats_csv: str, users: int) -> dict:
    """Throughput and latency percentiles of the one request type in a `--csv` run's `_stats.csv`."""
    with open(stats_csv) as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["Name"] != "Aggregated")
    n = int(row["Request Count"])
    return {"users": users, "requests": n, "failures": int(row["Failure Count"]), "qps": float(row["Requests/s"]),
            "p50_ms": float(row["50%"] or 0), "p95_ms": float(row["95%"] or 0), "p99_ms": float(row["99%"] or 0),
            "mean_ms": float(row["Average Response Time"] or 0)}


def counters(text: str) -> dict[str, float]:
    """The SCRAPED counters of a /metrics page, each summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    values = dict.fromkeys(SCRAPED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values


def server_side(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """Where the time went during one level, from the service's metrics: mean batch, the share of wall
    time spent in forward passes, mean queue wait and handler time per request."""
    d = {k: after[k] - before[k] for k in SCRAPED}

    def ratio(num: str, den: str, scale: float = 1.0, digits: int = 2):
        return round(scale * d[num] / d[den], digits) if d[den] else None

    out = {"mean_batch_size": ratio("dhrd_batch_size_sum", "dhrd_batch_size_count"),
           "forward_busy_percent": round(100 * d["dhrd_inference_duration_seconds_sum"] / seconds, 1),
           "queue_wait_ms": ratio("dhrd_queue_wait_seconds_sum", "dhrd_queue_wait_seconds_count", 1000, 1),
           "handler_ms": ratio("dhrd_request_duration_seconds_sum", "dhrd_request_duration_seconds_count", 1000, 1),
           # the inputs' own length: fixed by --tokens, or the task's mix in dhrd-real-lengths
           "mean_input_tokens": ratio("dhrd_input_tokens_total", "dhrd_request_duration_seconds_count", 1.0, 1)
           if d["dhrd_input_tokens_total"] else None}
    # Per request the server finished (a request cut off at the window's end still generated its tokens).
    if d["dhrd_cot_generated_tokens_total"] and d["dhrd_request_duration_seconds_count"]:
        out["mean_generated_tokens"] = round(d["dhrd_cot_generated_tokens_total"] / d["dhrd_request_duration_seconds_count"], 1)
    return out
