"""The report's headline numbers, derived from its scenarios, roofline and forward-only rows."""
from __future__ import annotations


def derive(report: dict, tokens: int) -> dict:
    """Headline numbers: saturation QPS per scenario, ratios of /classify to the others, % of roofline."""
    sat = {s["name"]: s["saturation_qps"] for s in report["scenarios"]}
    out: dict = {"saturation_qps": sat}
    base = sat.get("dhrd-batched")
    if base:
        out["ratio_classify_to"] = {name: round(base / q, 1) for name, q in sat.items()
                                    if name != "dhrd-batched" and q > 0}
    row = next((r for r in report["roofline"]["by_length"] if r["tokens"] == tokens), None)
    if row:
        out["roofline_qps_bf16"] = row["roofline_qps_bfloat16"]
        out["percent_of_bf16_roofline"] = {n: round(100 * q / row["roofline_qps_bfloat16"], 2) for n, q in sat.items()}
        # The ceiling of the dtype the service ran in (--dtype auto: float32 on a CPU without native bf16,
        # where the bf16 "roofline" is an emulation's and says nothing about serving).
        dtype = report.get("serving_dtype", "bfloat16")
        out[f"percent_of_{dtype}_roofline"] = {n: round(100 * q / row[f"roofline_qps_{dtype}"], 2)
                                               for n, q in sat.items()}
    forward = report.get("forward_only")
    if forward and base:
        best = max(r["sequences_per_s"] for r in forward["forward"])
        out["forward_only_best_seq_per_s"] = best
        out["percent_of_forward_only"] = round(100 * base / best, 1)
    batched = _scenario(report, "dhrd-batched")
    half = (batched or {}).get("half_load")
    if half:
        out["at_half_saturation"] = {k: half[k] for k in ("users", "target_qps", "qps", "p50_ms", "p99_ms")}
        out["at_half_saturation"]["p99_over_p50"] = round(half["p99_ms"] / half["p50_ms"], 2) if half["p50_ms"] else None
    peer = _scenario(report, "peer-infinity")
    if batched and peer:
        out["vs_peer_by_users"] = vs_peer(batched, peer)
    return out


def vs_peer(batched: dict, peer: dict) -> list[dict]:
    """/classify against the peer at each concurrency level both ran."""
    theirs = {lv["users"]: lv for lv in peer["levels"]}
    return [{"users": lv["users"], "qps_ratio": round(lv["qps"] / theirs[lv["users"]]["qps"], 2),
             "p99_ms": lv["p99_ms"], "peer_p99_ms": theirs[lv["users"]]["p99_ms"]}
            for lv in batched["levels"] if lv["users"] in theirs and theirs[lv["users"]]["qps"] > 0]


def _scenario(report: dict, name: str) -> dict | None:
    return next((s for s in report["scenarios"] if s["name"] == name), None)
