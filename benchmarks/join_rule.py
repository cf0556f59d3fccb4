"""How much the joining rule matters: built-in test decisions of a reward model when responses
are glued to their prompts (leading space dropped, as chat templates and verl decode them),
against the texts as trained and against the glued texts put through the one rendering rule
(`robust_rlhf.data.text.render_pair`). Prints one JSON line.

    python benchmarks/join_rule.py --model runs/rm [--data builtin:test]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="reward model folder")
    ap.add_argument("--data", default="builtin:test", help="preference pairs (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)

    import json as _json

    from robust_rlhf.data.preferences import builtin_split_path
    from robust_rlhf.data.text import render_pair
    from robust_rlhf.reward.model import RewardModel

    path = builtin_split_path(args.data.partition(":")[2] or "test") if args.data.startswith("builtin") else args.data
    rows = [_json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]  # raw rows: texts as written
    model = RewardModel.from_pretrained(args.model)

    def decide(pairs_c, pairs_r):
        c = model.score([p for p, _ in pairs_c], [r for _, r in pairs_c], batch_size=args.batch_size).mean
        r = model.score([p for p, _ in pairs_r], [r for _, r in pairs_r], batch_size=args.batch_size).mean
        return (c > r).tolist(), (c - r).tolist()

    as_trained = decide([(x["prompt"], x["chosen"]) for x in rows], [(x["prompt"], x["rejected"]) for x in rows])
    glued = decide([(x["prompt"], x["chosen"].lstrip()) for x in rows], [(x["prompt"], x["rejected"].lstrip()) for x in rows])
    ruled = decide([render_pair(x["prompt"], x["chosen"].lstrip()) for x in rows],
                   [render_pair(x["prompt"], x["rejected"].lstrip()) for x in rows])
    n = len(rows)
    flips = lambda a, b: sum(x != y for x, y in zip(a[0], b[0]))  # noqa: E731
    out = {"model": args.model, "data": args.data, "pairs": n,
           "accuracy_as_trained": sum(as_trained[0]) / n, "accuracy_glued": sum(glued[0]) / n,
           "accuracy_glued_then_rule": sum(ruled[0]) / n,
           "decisions_flipped_glued_vs_trained": flips(as_trained, glued) / n,
           "decisions_flipped_rule_vs_trained": flips(as_trained, ruled) / n}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
