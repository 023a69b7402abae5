"""Task synthesis per environment, one run, same seeds and verification budget for every arm.

    .venv/bin/python bench/tasks.py [--env textworld --env webapp] [--instances 3] [--steps 150]

Arms: naive (kinds and slot values drawn from the environment type's vocabulary, not the
instance; unverified: its feasible share is what verification would have kept), templates only,
+ explore and relabel, + curriculum (cumulative). Per arm: candidates, verified-feasible share,
duplicate share before and after dedup (a task whose (instance, goal) or normalized text came
before), predicate kinds and their entropy (bits), distinct verbs, mean pairwise embedding
distance (1 - cosine, all-MiniLM-L6-v2), verified tasks per 1,000 env steps, and tasks/s per
stage. Then the calibration of the embedding layer: cosines of paraphrases of one goal against
pairs one slot apart.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from collections import Counter

from trajforge.environments import goals, registry
from trajforge.synthesizers.policies import make_policy
from trajforge.synthesizers.search import Budget, SearchSettings
from trajforge.synthesizers.tasks import Candidate, Embedder, SynthesisSettings, synthesize
from trajforge.synthesizers.tasks.dedup import normalize
from trajforge.synthesizers.tasks.verify import verify

DEDUP = ("duplicate", "near", "text_cap")  # drop reasons of the dedup layers
ENV_OPTIONS = {"textworld": {"options": {"cut": True, "cook": True, "open": True}}, "webapp": {}}
PARAPHRASES = [
    ("Add the red kettle to your cart.", "Put the red kettle in your shopping cart."),
    ("Take the tomato.", "Pick up the tomato."),
    ("Open the fridge.", "Make sure the fridge is open."),
    ("Dice the yellow potato.", "Cut the yellow potato into small cubes."),
    ("Buy the blue tote.", "Place an order that includes the blue tote."),
]
MINIMAL_PAIRS = [
    ("Add the red kettle to your cart.", "Add the blue kettle to your cart."),
    ("Take the tomato.", "Take the potato."),
    ("Fill your cart so that its total is at most $50.", "Fill your cart so that its total is at most $75."),
    ("Dice the yellow potato.", "Slice the yellow potato."),
    ("Put the knife on the table.", "Put the knife on the counter."),
]


def naive(name: str, result, n_per_instance: int, seed: int) -> tuple[list[Candidate], int]:
    """Goals drawn from the type's vocabulary, checked as verification would check them."""
    env = goals.wrap(registry.make(name, **ENV_OPTIONS[name]))
    rng = random.Random(seed)
    out, feasible = [], 0
    try:
        kinds = goals.kinds_of(env)
        for (_, base, bseed), archive in result.archives.items():
            env.reset(archive.base)
            vocab = env.vocabulary()
            for _ in range(n_per_instance):
                kind = rng.choice(sorted(kinds.values(), key=lambda k: k.name))
                goal = goals.canonical_goal(
                    [(kind.name, *(rng.choice(vocab.get(t, ["?"])) for t in kind.slots))]
                )
                cell = archive.holding(goal)
                c = Candidate(name, base, bseed, goal, "naive", "template", (), cell.prefix if cell else ())
                c = c.but(instruction=goals.render(kinds, goal, c.env_task) or "")
                checked, reason, _ = verify(env, c) if cell else (c, "no_witness", "")
                feasible += reason is None
                out.append(checked)
    finally:
        env.close()
    return out, feasible


def dup_share(cands: list[Candidate]) -> float:
    seen, dups = set(), 0
    for c in cands:
        keys = {("goal", c.instance, c.goal), ("text", normalize(c.instruction))}
        dups += bool(keys & seen)
        seen |= keys
    return dups / len(cands) if cands else 0.0


def entropy(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values() if n) if total else 0.0


def spread(embed, cands: list[Candidate]) -> float:
    if len(cands) < 2:
        return 0.0
    v = embed([c.instruction for c in cands])
    pairs = list(itertools.combinations(range(len(cands)), 2))
    return sum(1 - float(v[i] @ v[j]) for i, j in pairs) / len(pairs)


def describe(cands: list[Candidate]) -> tuple[Counter, int]:
    kinds = Counter(f[0] for c in cands for f in c.goal)
    verbs = {
        clause.split()[0].lower()
        for c in cands
        for clause in c.instruction.replace(", ", " and ").split(" and ")
        if clause.strip()
    }
    return kinds, len(verbs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", action="append")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150, help="exploration steps per instance")
    ap.add_argument("--attempts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    embed = Embedder()
    search = SearchSettings(method="rollout", max_steps=10, budget=Budget(env_steps=10))
    header = (
        f"{'env':10} {'arm':12} {'cands':>5} {'feas%':>6} {'dup%<':>6} {'dup%>':>6} {'kept':>5} {'kinds':>5} "
        f"{'H':>5} {'verbs':>5} {'dist':>5} {'/1k st':>7}"
    )
    rows, stages = [header], []
    for name in args.env or ["textworld", "webapp"]:
        settings = SynthesisSettings(
            instances=args.instances, explore_steps=args.steps, attempts=args.attempts
        )
        t = time.monotonic()
        result = synthesize(
            name, ENV_OPTIONS[name], settings, search, make_policy("random"), args.seed, embed=embed
        )
        wall = time.monotonic() - t
        verified = list(result.kept)  # after dedup
        steps = sum(result.env_steps.values())
        naive_c, naive_ok = naive(name, result, 10, args.seed)
        kinds, verbs = describe(naive_c)
        rows.append(
            f"{name:10} {'naive':12} {len(naive_c):5d} {100 * naive_ok / max(1, len(naive_c)):6.1f} "
            f"{100 * dup_share(naive_c):6.1f} {'-':>6} {len(naive_c):5d} {len(kinds):5d} "
            f"{entropy(kinds):5.2f} {verbs:5d} {spread(embed, naive_c):5.2f} {'-':>7}"
        )
        for arm, sources in (
            ("templates", {"template"}),
            ("+explore", {"template", "explored"}),
            ("+curriculum", {"template", "explored", "curriculum"}),
        ):
            rows_of = [r for r in result.candidates if r["source"] in sources]
            cands = len(rows_of)  # every candidate with a goal, kept or dropped
            kept = [c for c in verified if c.source in sources]
            dups = sum(1 for r in rows_of if r["reason"].startswith(DEDUP))
            feasible = len(kept) + dups  # verified, before dedup
            kinds, verbs = describe(kept)
            rows.append(
                f"{name:10} {arm:12} {cands:5d} {100 * feasible / max(1, cands):6.1f} "
                f"{100 * dups / max(1, feasible):6.1f} {100 * dup_share(kept):6.1f} {len(kept):5d} "
                f"{len(kinds):5d} {entropy(kinds):5.2f} {verbs:5d} {spread(embed, kept):5.2f} "
                f"{1000 * len(kept) / max(1, steps):7.1f}"
            )
        per_stage = ", ".join(
            f"{s} {result.env_steps[s]} steps {result.wall_s[s]:.0f}s" for s in ("explore", "verify", "solve")
        )
        stages.append(
            f"{name}: {len(verified)} tasks in {wall:.0f}s ({len(verified) / wall:.2f} tasks/s); "
            f"{per_stage}; "
            f"dedup {result.wall_s['dedup']:.1f}s; sources kept "
            + str(
                {s: sum(1 for c in verified if c.source == s) for s in ("template", "explored", "curriculum")}
            )
            + "; drops "
            + str(
                {
                    k.removeprefix("dropped:"): v
                    for k, v in sorted(result.counts.items())
                    if k.startswith("dropped:")
                }
            )
        )
    print("\n".join(rows))
    print()
    print("\n".join(stages))
    print()
    for label, pairs in (
        ("paraphrases (same goal)", PARAPHRASES),
        ("minimal pairs (one slot apart)", MINIMAL_PAIRS),
    ):
        cos = [float(v[0] @ v[1]) for v in (embed([a, b]) for a, b in pairs)]
        print(f"{label}: cosine {min(cos):.3f}..{max(cos):.3f}")


if __name__ == "__main__":
    main()
