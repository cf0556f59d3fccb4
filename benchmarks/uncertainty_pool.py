"""Build a held-out best-of-n pool for `rm eval --pool`: N samples per prompt from the embedded
policy (SmolLM2-135M-Instruct), gold-scored, one JSONL row per (prompt, response):
{"prompt", "response", "gold", "domain"}.

Prompts: the built-in validation + test prompts (never in training; "in_domain") and the
36 prompt-shifted openings of the lab's shift sets (restaurants, hotels, gadgets: "shifted").

    python benchmarks/uncertainty_pool.py --output pool.jsonl --samples 16 --gold vader
Resumable: prompts already in --output are skipped (rows are appended per prompt).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--gold", default="vader")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N prompts only (smoke runs)")
    args = ap.parse_args()
    from robust_rlhf.data.preferences import load_preferences
    from robust_rlhf.experiments.stages import SHIFTED_PROMPTS
    from robust_rlhf.gold import load_gold
    from robust_rlhf.models.hub import load_causal_lm, load_tokenizer
    from robust_rlhf.models.generation import SamplingConfig, generate

    tok = load_tokenizer("smollm2-135m")
    held = []
    for split in ("validation", "test"):
        for p in load_preferences(f"builtin:{split}", tok):
            if p.prompt not in held:
                held.append(p.prompt)
    prompts = [(p, "in_domain") for p in held] + [(p, "shifted") for p in SHIFTED_PROMPTS]
    if args.limit:
        prompts = prompts[: args.limit]
    out = Path(args.output)
    done = set()
    if out.exists():
        done = {json.loads(line)["prompt"] for line in out.read_text().splitlines() if line.strip()}
    lm = load_causal_lm("smollm2-135m").eval()
    gold = load_gold(args.gold)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0)
    for i, (prompt, domain) in enumerate(prompts):
        if prompt in done:
            continue
        torch.manual_seed(args.seed * 1_000_003 + i)
        ro = generate(lm, tok, [prompt] * args.samples, cfg)
        g = gold(ro.prompts, ro.responses)
        with out.open("a") as f:
            for r, gv in zip(ro.responses, g):
                f.write(json.dumps({"prompt": prompt, "response": r, "gold": float(gv), "domain": domain}) + "\n")
        print(f"{i + 1}/{len(prompts)} {domain} {prompt!r}", flush=True)


if __name__ == "__main__":
    main()
