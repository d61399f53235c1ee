"""The two device calls: each a fixed list of stages with a budget in seconds, and the `run(...)` calls of
the device tool that `python -m loadtest.gpu --plan` prints (BENCHMARKS.md quotes them)."""
from __future__ import annotations

import json

# Each call is a fixed list of stages with a budget in seconds each. The device budgets are our
# estimates, not measurements (nothing has run on a GPU yet); they sum to less than the call's total
# (CALL_BUDGET_S), which leaves the rest of RUN_TIMEOUT_S to installing the carried wheels.
CALLS = {
    "1": {"shape": "smollm2-135m", "budgets": {"write": 25, "ceiling": 40, "null": 25, "classify": 80, "cot": 60}},
    "2": {"shape": "llama-3.2-3b", "budgets": {"write": 50, "ceiling": 70, "classify": 115}},
}
# The CPU rehearsal (--quick, tiny shape) on a shared 2-core machine: start-up dominates every stage.
QUICK_BUDGETS = {"write": 40, "ceiling": 40, "null": 25, "classify": 60, "cot": 60}
CALL_BUDGET_S = 240.0  # the kit's own limit per call: stages that would not fit are skipped, never started
RUN_TIMEOUT_S = 300  # the run tool's timeout_s per call: the kit's budget + wheel install + margin
CARRY = [".gpu-wheels"]
WATCHDOG_GRACE_S = 15.0  # past the call's budget by this much, the run is ended with its report saved


def plan() -> list[dict]:
    """The exact `run(...)` calls of the device tool, one per call, with their stages and budgets."""
    return [{"command": f"bash loadtest/gpu/run.sh --call {n}", "carry": CARRY, "timeout_s": RUN_TIMEOUT_S,
             "shape": c["shape"], "budget_s": CALL_BUDGET_S, "stages": c["budgets"]} for n, c in CALLS.items()]


def plan_lines() -> list[str]:
    """The two `run(...)` calls as written in BENCHMARKS.md, each with a comment line of its stages."""
    lines = []
    for p in plan():
        lines.append(f'run(command="{p["command"]}", carry={json.dumps(p["carry"])}, timeout_s={p["timeout_s"]})')
        lines.append(f"    # {p['shape']}, kit budget {p['budget_s']:g} s: "
                     + ", ".join(f"{k} {v} s" for k, v in p["stages"].items()))
    return lines


def print_plan() -> None:
    print("Device calls (the `run` tool; first, here: bash loadtest/gpu/wheels.sh):")
    print("\n".join(plan_lines()))


def budgets_of(args) -> dict[str, float]:
    """The call's stages and their budgets, with --stage-budget overrides; raises on an unknown stage."""
    budgets = dict(CALLS[args.call]["budgets"])
    if args.quick:
        budgets = {k: QUICK_BUDGETS[k] for k in budgets}
    for item in args.stage_budget:
        name, _, seconds = item.partition("=")
        if name not in budgets:
            raise SystemExit(f"--stage-budget {item!r}: call {args.call} has no stage {name!r} (it has {', '.join(budgets)})")
        budgets[name] = float(seconds)
    return budgets
