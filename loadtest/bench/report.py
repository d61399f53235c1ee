"""Write a load-test report: JSON, the markdown table, the PNG plots and BENCHMARKS.md's measured block."""
from __future__ import annotations

import json
import os
from pathlib import Path

# The marker names the command that writes the block (loadtest/bench); BENCHMARKS.md carries it verbatim.
BLOCK_START, BLOCK_END = "<!-- measured:start (python -m loadtest.bench writes this block) -->", "<!-- measured:end -->"


def write(report: dict, out: Path, stem: str, benchmarks: Path | None) -> None:
    """`out/<stem>.json`, `.md` and `.png`, and the measured block of `benchmarks` when given."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report) + "\n")
    plots(report, out / stem)
    if benchmarks:
        update_block(benchmarks, report, out / f"{stem}.png")


def markdown(report: dict) -> str:
    lines = ["| scenario | users | req/s | p50 ms | p95 ms | p99 ms | failures | mean batch | forward busy % | "
             "queue wait ms | handler ms | gen. tokens/req |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        half = [{**s["half_load"], "users": f"{s['half_load']['users']} paced to {s['half_load']['target_qps']}/s"}
                ] if s.get("half_load") else []
        for lv in s["levels"] + half:
            lines.append(f"| {s['name']} | {lv['users']} | {lv['qps']:.2f} | {lv['p50_ms']:.0f} | {lv['p95_ms']:.0f} | "
                         f"{lv['p99_ms']:.0f} | {lv['failures']} | {_cell(lv.get('mean_batch_size'))} | "
                         f"{_cell(lv.get('forward_busy_percent'))} | {_cell(lv.get('queue_wait_ms'))} | "
                         f"{_cell(lv.get('handler_ms'))} | {_cell(lv.get('mean_generated_tokens'))} |")
    accuracy = [(s["name"], s["accuracy"]) for s in report["scenarios"] if "accuracy" in s]
    if accuracy:
        lines += ["", "| endpoint (scenario) | validation examples | accuracy | saturation req/s |", "|---|---|---|---|"]
        sat = report.get("summary", {}).get("saturation_qps", {})
        lines += [f"| {name} | {a['examples']} | {a['accuracy']:.3f} | {sat.get(name, 0):.2f} |" for name, a in accuracy]
    lines += ["", "```json", json.dumps(report.get("summary", {}), indent=2), "```"]
    return "\n".join(lines)


def _cell(value) -> str:
    return "" if value is None else str(value)


def plots(report: dict, stem: Path) -> list[Path]:
    """QPS and p50/p99 against concurrency per scenario (log scales: CoT is orders slower), and one
    accuracy-vs-QPS point per endpoint whose accuracy was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_qps, ax_lat, ax_acc) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, s in enumerate(report["scenarios"]):
        color = f"C{i % 10}"  # one colour per scenario in every panel
        users = [lv["users"] for lv in s["levels"]]
        ax_qps.plot(users, [max(lv["qps"], 1e-3) for lv in s["levels"]], marker="o", color=color, label=s["name"])
        for q, style in (("p50_ms", "-"), ("p99_ms", ":")):
            ax_lat.plot(users, [max(lv[q], 1e-1) for lv in s["levels"]], style, marker=".", color=color)
        if "accuracy" in s:
            ax_acc.scatter(max(s["saturation_qps"], 1e-3), s["accuracy"]["accuracy"], s=50, color=color)
            ax_acc.annotate(s["name"], (max(s["saturation_qps"], 1e-3), s["accuracy"]["accuracy"]), fontsize=8,
                            textcoords="offset points", xytext=(5, 5))
    _style(ax_qps, ax_lat, ax_acc)
    fig.tight_layout()
    path = stem.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _style(ax_qps, ax_lat, ax_acc) -> None:
    for ax, title in ((ax_qps, "requests/s"), (ax_lat, "latency (ms): p50 solid, p99 dotted (colours as left)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent users")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("saturation requests/s")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_title("accuracy vs throughput")
    ax_acc.grid(True, which="both", alpha=0.3)
    ax_qps.legend(fontsize=7)


def update_block(path: Path, report: dict, plot: Path) -> None:
    """Replace the block between the markers (the prose around it is written by people)."""
    text = path.read_text() if path.exists() else f"{BLOCK_START}\n{BLOCK_END}\n"
    if BLOCK_START not in text or BLOCK_END not in text:
        raise SystemExit(f"{path}: no measured block ({BLOCK_START} ... {BLOCK_END}) to update")
    m = report["machine"]
    header = (f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores), commit `{report['commit']}`, "
              f"inputs of {report['tokens']} tokens, export `{report['export']}`.\n"
              f"Command: `{report['command']}`. Raw data: `{os.path.relpath(plot.with_suffix('.json'), path.resolve().parent)}`.\n\n"
              f"![QPS, latency and accuracy against load]({os.path.relpath(plot, path.resolve().parent)})\n\n")
    before, rest = text.split(BLOCK_START, 1)
    after = rest.split(BLOCK_END, 1)[1]
    path.write_text(f"{before}{BLOCK_START}\n{header}{markdown(report)}\n{BLOCK_END}{after}")
