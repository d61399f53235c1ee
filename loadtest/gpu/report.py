"""A call's markdown report, the issue's targets judged against what was measured, and batch-1 latency."""
from __future__ import annotations

import json

TARGETS = {"smollm2-135m": {"req_per_s": 5000, "share": 0.45, "batch1_p50_ms": 5.0},
           "llama-3.2-3b": {"req_per_s": 1000, "share": 0.80}}


def markdown(report: dict) -> str:
    lines = [f"# GPU serving benchmark, call {report.get('call')}, {report['date']}", "",
             f"Machine: {report['machine']}; device: {report['device_name']}; commit {report['commit']}; "
             f"command: `{report['command']}`; budget {report.get('budget_s')} s", ""]
    for shape, r in report["shapes"].items():
        lines += [f"## {shape}", ""]
        if r.get("write"):
            w = r["write"]
            lines.append(f"- export written: {w['parameters']:,} parameters, {w['weights_bytes']:,} bytes; "
                         f"init {w['init_s']} s, save {w['save_s']} s, hash {w['hash_s']} s")
        fwd = r.get("forward") or {}
        for mode in ("eager", "cuda_graphs"):
            if mode in fwd:
                cells = ", ".join(f"b{b}: {v['seq_per_s']:,.0f} seq/s ({v['ms']} ms)" for b, v in fwd[mode].items())
                lines.append(f"- forward only, {mode}: {cells}")
        ceiling = r.get("ceiling_seq_per_s")
        for key, title in (("null_server", "null server"), ("classify", "`/classify`")):
            c = r.get(key)
            if c:
                flags = f"; flags `{' '.join(c['flags'])}`; mean batch {c['mean_batch']}" if "flags" in c else ""
                lines += ["", f"{title}{flags}:", "",
                          "| connections | req/s | p50 ms | p99 ms | share of ceiling | statuses |", "|---|---|---|---|---|---|"]
                for row in c["rows"]:
                    share = f"{100 * row['req_per_s'] / ceiling:.0f} %" if ceiling and key == "classify" else "-"
                    lines.append(f"| {row['connections']} | {row['req_per_s']:,.0f} | {row['p50_ms']} | {row['p99_ms']} "
                                 f"| {share} | {row['statuses']} |")
        if r.get("batch1"):
            lines += ["", f"- batch-1 latency: {json.dumps(r['batch1'])}"]
        c = r.get("cot")
        if c:
            rd = c["round"]
            lines.append(f"- CoT, {c['engine']}, {c['new_tokens']} new tokens, {rd['requests']} concurrent, cut at "
                         f"{c['seconds_cap']} s: {rd['ok']} ok, {rd['cut_off']} cut off, {rd['req_per_s']} req/s, "
                         f"{rd['generated_tokens_per_s']:,.0f} tokens/s (one round, warm-up included)")
        if r.get("targets"):
            lines.append(f"- targets: {json.dumps(r['targets'])}")
        lines.append("")
    lines += ["## Stages", "", "| stage | status | seconds | budget s | error |", "|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {s.get('budget_s', '')} "
                     f"| {(s.get('error') or s.get('reason') or '')[:200]} |")
    return "\n".join(lines) + "\n"


def judge(shape: str, r: dict) -> dict:
    """The issue's targets against what was measured (only where both exist)."""
    target, out = TARGETS.get(shape), {}
    rows = (r.get("classify") or {}).get("rows") or []
    if not target or not rows:
        return out
    best = max(row["req_per_s"] for row in rows)
    out["best_req_per_s"] = best
    out["req_per_s_met"] = best >= target["req_per_s"]
    if r.get("ceiling_seq_per_s"):
        out["share"] = round(best / r["ceiling_seq_per_s"], 3)
        out["share_met"] = out["share"] >= target["share"]
    if "batch1_p50_ms" in target:
        one = next((row for row in rows if row["connections"] == 1), None)
        if one:
            out["batch1_p50_ms"] = one["p50_ms"]
            out["batch1_p50_met"] = one["p50_ms"] <= target["batch1_p50_ms"]
    return out


def batch1(r: dict) -> dict:
    """Batch-1 latency from what the call measured: the forward pass alone and one connection's requests."""
    out = {}
    fwd = r.get("forward") or {}
    for mode in ("eager", "cuda_graphs"):
        if "1" in (fwd.get(mode) or {}):
            out[f"forward_{mode}_ms"] = fwd[mode]["1"]["ms"]
    one = next((row for row in (r.get("classify") or {}).get("rows") or [] if row["connections"] == 1), None)
    if one:
        out.update(classify_p50_ms=one["p50_ms"], classify_p99_ms=one["p99_ms"])
    return out


def device_name(device: str) -> str:
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # the report says so rather than failing
        pass
    return "cpu" if device == "cpu" else f"{device} (unavailable)"
