"""The closed loop: does trajforge's data make an agent better at held-out games?

    .venv/bin/python bench/closed_loop.py [--train-games 60] [--heldout-games 20] [--steps 300]
        [--settings recipe=2,take=2,go=6] [--mcts-games 30] [--dpo-steps 60] [--model scratch|smollm2]
        [--work DIR] [--cache DIR]

1. TextWorld cooking games (settings where reading matters: several rooms, two-ingredient
   recipes), split by game into train and held-out (no held-out game is a train game).
2. `trajforge run` on the train games: the oracle (rollout) and MCTS (random policy, uniform prior).
3. `trajforge export --format sft`: oracle trajectories only, and oracle + MCTS;
   `trajforge export --format dpo --sources mcts_sibling`: the lake's MCTS sibling pairs as
   single-step preference rows (prompt = the conversation so far, chosen/rejected = one turn).
4. `trajforge train`: one starting model written with `--steps 0` (scratch: a ~1M-parameter Llama
   and a tokenizer trained on the oracle export's text; or SmolLM2-135M-Instruct from its GGUF), then SFT
   on each export for the same number of steps from that same model, then DPO on top of oracle SFT.
5. Held-out evaluation through trajforge's own policy path (`hf:DIR`, greedy): success rate,
   first-choice step accuracy along the oracle's path, steps per episode; random and the untrained
   model are the baselines from the same run. One markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from trajforge.environments.textworld import TextWorldEnvironment, ensure_games
from trajforge.inference.specs import weights_fingerprint
from trajforge.recipes.evaluate import Scores, evaluate, markdown
from trajforge.store.lake import Lake


def trajforge(*args: str, timeout: float = 3600) -> str:
    cmd = [sys.executable, "-m", "trajforge.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    for line in done.stderr.splitlines():
        if line.startswith("warning:"):
            print(f"{args[0]}: {line}", flush=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def settings_of(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value, value)
    return out


def split_games(env: TextWorldEnvironment, n_train: int, n_held: int, seed: int):
    train = env.task_specs(n_train, seed)
    seen = {s.env_task for s in train}
    held = [s for s in env.task_specs(n_held + n_train, seed + 1) if s.env_task not in seen][:n_held]
    assert not seen & {s.env_task for s in held}
    return train, held


def run_config(path: Path, env_options: dict, **fields) -> Path:
    path.write_text(yaml.safe_dump({"envs": [{"name": "textworld", "options": env_options}], **fields}))
    return path


def export_all(lake: Path, data: dict[str, Path], pairs: bool) -> None:
    where = ["--where", "search = 'rollout'"]
    trajforge("export", "--out", str(lake), "--dest", str(data["sft-oracle"]), *where, "--overwrite")
    trajforge("export", "--out", str(lake), "--dest", str(data["sft-all"]), "--overwrite")
    if pairs:
        dpo = ["--format", "dpo", "--sources", "mcts_sibling"]
        trajforge("export", "--out", str(lake), "--dest", str(data["dpo"]), *dpo, "--overwrite")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-games", type=int, default=60)
    ap.add_argument("--heldout-games", type=int, default=20)
    ap.add_argument("--mcts-games", type=int, default=30, help="train games MCTS runs on (0: none)")
    ap.add_argument("--settings", default="recipe=2,take=2,go=6", help="tw-cooking settings")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="scratch", help="scratch or smollm2 (slow: ~14 s per step)")
    ap.add_argument("--steps", type=int, default=300, help="SFT steps")
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument(
        "--variants",
        default="sft-oracle,sft-all,sft-oracle+dpo",
        help="trained models to compare: SFT on oracle rows, SFT on oracle + MCTS rows, DPO on MCTS "
        "sibling pairs on top of oracle SFT",
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=40, help="steps per episode (runs and evaluation)")
    ap.add_argument("--mcts-budget", type=int, default=800, help="env steps per MCTS task")
    ap.add_argument(
        "--max-length", type=int, default=2048, help="tokens per training row (a longer row loses its end)"
    )
    ap.add_argument("--eval-steps", type=int, default=30, help="steps per held-out episode")
    ap.add_argument("--eval-tokens", type=int, default=24, help="tokens a model may write per step")
    ap.add_argument("--work", type=Path, default=Path("bench-closed-loop"))
    ap.add_argument("--cache", default=None, help="TextWorld game cache (default: trajforge's)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take the lake and exports already in --work as they are (no run, no export)",
    )
    ap.add_argument(
        "--eval-only",
        nargs="+",
        metavar="NAME",
        help="only evaluate these (random, untrained, sft-oracle, ...) whose models exist, into the "
        "evaluation cache of --work (a later full run reuses them); to overlap with training",
    )
    args = ap.parse_args()

    options = settings_of(args.settings)
    env_options = {"challenge": "tw-cooking", "options": options, "cache_dir": args.cache}
    env = TextWorldEnvironment(**env_options)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t = time.monotonic()
    train, held = split_games(env, args.train_games, args.heldout_games, args.seed)
    ensure_games([s.env_task for s in train + held], args.cache, workers=2)
    times["games"] = time.monotonic() - t
    models = work / f"models-{args.model}"
    eval_options = {"max_steps": args.eval_steps, "max_tokens": args.eval_tokens, "cache_dir": None}

    def scored(name: str) -> Scores:
        """The held-out scores of `name` (cached in --work by the model's files and the settings)."""
        spec = "random" if name == "random" else f"hf:{models / name}"
        key = {"spec": spec, "games": [s.env_task for s in held], **eval_options}
        if spec != "random":
            key["weights"] = weights_fingerprint(models / name)
        path = work / "evals" / f"{args.model}-{name}.json"
        if path.is_file() and json.loads(path.read_text())["key"] == key:
            return Scores(**json.loads(path.read_text())["scores"])
        result = evaluate(spec, env, held, **eval_options)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"key": key, "scores": asdict(result)}, indent=1))
        print(f"evaluated {name}: {result}", flush=True)
        return result

    if args.eval_only:
        done = [scored(name) for name in args.eval_only]
        named = {s.policy: name for s, name in zip(done, args.eval_only, strict=True)}
        print(f"\n{args.settings}, {len(held)} held-out games, model {args.model}\n\n{markdown(done, named)}")
        return

    lake = work / "lake"
    t = time.monotonic()
    common = {"tasks": args.train_games, "seed": args.seed, "max_steps": args.max_steps}
    runs = [] if args.reuse else ["oracle", *(["mcts"] if args.mcts_games else [])]
    if "oracle" in runs:
        trajforge(
            "run",
            "--config",
            str(run_config(work / "oracle.yaml", env_options, policies=["oracle"], **common)),
            "--out",
            str(lake),
        )
    if "mcts" in runs:
        mcts = {
            **common,
            "tasks": args.mcts_games,
            "search": "mcts",
            "policies": ["random"],
            "budget": {"env_steps": args.mcts_budget, "wall_s": 120},
        }
        trajforge(
            "run", "--config", str(run_config(work / "mcts.yaml", env_options, **mcts)), "--out", str(lake)
        )
    times["trajforge run"] = time.monotonic() - t
    with Lake.open(lake, read_only=True) as db:
        counts = db.sql(
            "SELECT search, count(*) AS n, count(*) FILTER (WHERE success) AS won "
            "FROM trajectories GROUP BY 1"
        ).to_pylist()
        tasks_in_lake = {r["env_task"] for r in db.sql("SELECT env_task FROM tasks").to_pylist()}
    assert not tasks_in_lake & {s.env_task for s in held}, "a held-out game reached the lake"

    data = {name: work / name for name in ("sft-oracle", "sft-all", "dpo")}
    if not args.reuse:
        export_all(lake, data, args.mcts_games > 0)
    dpo_rows = data["dpo"] / "data"
    n_pairs = pq.read_table(dpo_rows).num_rows if args.mcts_games and dpo_rows.is_dir() else 0

    lr = "3e-3" if args.model == "scratch" else "2e-5"
    t = time.monotonic()
    base = models / "untrained"
    if not base.exists():
        trajforge(
            "train",
            "--data",
            str(data["sft-oracle"]),
            "--model",
            args.model,
            "--out",
            str(base),
            "--steps",
            "0",
        )
    trained = {"untrained": base}
    plan = [
        ("sft-oracle", "sft", "sft-oracle", base, args.steps),
        ("sft-all", "sft", "sft-all", base, args.steps),
    ]
    if n_pairs:
        plan.append(("sft-oracle+dpo", "dpo", "dpo", models / "sft-oracle", args.dpo_steps))
    plan = [p for p in plan if p[0] in args.variants.split(",")]
    for name, fmt, source, start, steps in plan:
        target = models / name
        if not target.exists():
            line = trajforge(
                "train",
                "--format",
                fmt,
                "--data",
                str(data[source]),
                "--model",
                str(start),
                "--out",
                str(target),
                "--steps",
                str(steps),
                "--learning-rate",
                lr if fmt == "sft" else "1e-4",
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
            )
            print(f"{name}: {line}", flush=True)
        trained[name] = target
    times["train"] = time.monotonic() - t

    t = time.monotonic()
    rows = [scored(name) for name in ["random", *trained]]
    labels = {"random": "random"} | {f"hf:{path}": name for name, path in trained.items()}
    times["evaluate"] = time.monotonic() - t

    print(
        f"\n## Closed loop: {args.settings}, {len(train)} train / {len(held)} held-out games, "
        f"model {args.model}\n"
    )
    print(
        "lake: "
        + ", ".join(f"{r['search']} {r['won']}/{r['n']} won" for r in counts)
        + f"; {n_pairs} DPO pairs"
    )
    print(
        f"training: SFT {args.steps} steps, DPO {args.dpo_steps} steps, batch {args.batch_size}, "
        f"{args.max_length} tokens a row; held-out episodes of at most {args.eval_steps} steps\n"
    )
    print(markdown(rows, labels))
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
