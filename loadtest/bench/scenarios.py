"""The scenarios of the performance report, their tuned flags, and the fixed-length inputs they are sent."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..servers import PEER_BATCH


@dataclass
class Scenario:
    name: str
    user: str  # Locust user class
    serve_flags: list[str]
    users: list[int]
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    peer: bool = False  # served by infinity-emb from --peer-hf instead of `dhrd serve`
    half_load: bool = False  # after the sweep, an open-loop level at half the saturation rate
    slow: bool = False  # CoT: each request takes seconds, so each level runs twice as long
    optional: bool = False  # run only when named in --only
    int8: bool = False  # serves the --int8-export (`dhrd quantize` of --export) instead of --export


# The tuned knobs of scenario 1 (python -m loadtest.forward profile: ~1,024 padded tokens per pass is the CPU optimum).
BATCHED_FLAGS = ["--max-batch-size", "32", "--max-batch-tokens", "1024", "--max-wait-ms", "5"]

# Scenarios whose accuracy the report measures (endpoint, and the env var holding max_new_tokens); the
# others serve the same model with the same decoding, so their accuracy is the same.
ACCURACY_OF = {"dhrd-batched": ("/classify", None), "cot-batched": ("/classify/cot", "DHRD_COT_MAX_NEW_TOKENS"),
               "cot-short-unbatched": ("/classify/cot", "DHRD_COT_MAX_NEW_TOKENS")}


def scenarios(smoke: bool, cot_tokens: int, short_cot_tokens: int) -> list[Scenario]:
    sweep = [1, 4] if smoke else [1, 4, 16, 32, 64, 128]
    cot_sweep = [1] if smoke else [1, 8]
    # CoT requests run for tens of seconds each: the 30 s default deadline would turn them into 504s.
    cot = ["--cot", "--request-timeout-s", "900"]
    return [
        Scenario("dhrd-batched", "ClassifyUser", [*BATCHED_FLAGS], sweep, note="dynamic batching: " + " ".join(
            BATCHED_FLAGS).replace("--", "").replace("-", "_"), half_load=True),
        # The engine process (front ends apart from the forward pass), to compare with the one-process default.
        Scenario("dhrd-engine-process", "ClassifyUser", [*BATCHED_FLAGS, "--workers", "1"], sweep,
                 note="as dhrd-batched, with --workers 1 (one front-end process + the engine process)",
                 half_load=True, optional=True),
        # `dhrd serve --compile`: ~2.5 min of compilation at start-up, so not in the default run.
        Scenario("dhrd-compiled", "ClassifyUser", [*BATCHED_FLAGS, "--compile"], sweep[2:] or sweep,
                 note="as dhrd-batched, with --compile", optional=True),
        # The task's validation inputs as they come (structured fields the service formats, every length):
        # what a real caller sends, against the fixed-length inputs every other scenario gets.
        Scenario("dhrd-real-lengths", "ClassifyUser", [*BATCHED_FLAGS], sweep, {"DHRD_LOAD_INPUTS": ""},
                 note="as dhrd-batched, with the task's validation inputs at their own lengths"),
        # The int8 export on the same batching; its accuracy gate is judged apart (python -m loadtest.forward
        # int8 --gate): served here with --allow-ungated-int8 to measure its speed whatever the gate said.
        Scenario("dhrd-int8", "ClassifyUser", [*BATCHED_FLAGS, "--allow-ungated-int8"], sweep,
                 note="as dhrd-batched, serving the int8 export (dhrd quantize; gate judged apart)", int8=True),
        Scenario("naive-unbatched", "ClassifyUser", ["--max-batch-size", "1", "--max-wait-ms", "0"], sweep,
                 note="same service, batch size 1"),
        Scenario("peer-infinity", "InfinityUser", [], sweep, {"DHRD_PEER_MODEL": "peer"},
                 note=f"infinity-emb 0.0.78, torch engine, bf16, batch size {PEER_BATCH}, HF-layout export", peer=True),
        Scenario("cot-batched", "CotUser", [*cot, "--cot-max-batch-size", "8", "--max-wait-ms", "20"], cot_sweep,
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT decoding, batches of up to 8, T=0.1 top_p=0.7, <= {cot_tokens} new tokens", slow=True),
        # One user: with batch size 1 more users only queue.
        Scenario("cot-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens)}, note=f"CoT, one sequence at a time, <= {cot_tokens}",
                 slow=True),
        Scenario("cot-short-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(short_cot_tokens)},
                 note=f"CoT, one at a time, <= {short_cot_tokens} new tokens", slow=True),
        # The paper's CoT length regime: its 3-8B models write long rationales, our 135M one stops early;
        # forcing exactly cot_tokens new tokens (min = max) measures what that length costs here.
        Scenario("cot-forced-batched", "CotUser", [*cot, "--cot-max-batch-size", "8", "--max-wait-ms", "20"],
                 cot_sweep[-1:], {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens), "DHRD_COT_MIN_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT, batches of up to 8, exactly {cot_tokens} new tokens", slow=True),
        Scenario("cot-forced-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens), "DHRD_COT_MIN_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT, one at a time, exactly {cot_tokens} new tokens", slow=True),
    ]


def fixed_length_inputs(export: Path, tokens: int, path: Path, count: int = 200) -> Path:
    """Real validation inputs, formatted and cut to exactly `tokens` tokens (their end kept), as text."""
    from transformers import AutoTokenizer

    from contract.encoding import encode_input
    from contract.tasks import get_task
    from contract.data import load_examples

    manifest = json.loads((export / "manifest.json").read_text())
    task = get_task(manifest["task"])
    tokenizer = AutoTokenizer.from_pretrained(export)
    texts = []
    for e in load_examples(task, "val"):
        ids, _ = encode_input(tokenizer, task.format(e.fields), tokens)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if len(tokenizer(text)["input_ids"]) == tokens:  # decoding can merge tokens; keep exact ones
            texts.append(text)
        if len(texts) >= count:
            break
    path.write_text(json.dumps(texts))
    return path
