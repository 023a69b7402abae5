"""The records a search result makes: its trajectories (with their ids and their share of the
search's cost), its screenshots, its tree's nodes and its sibling pairs. Plain Python, so what
the pipeline stages can be tested without Beam."""

from __future__ import annotations

from collections import Counter
from typing import Any

from trajforge.inference.specs import model_fingerprint
from trajforge.schemas import ids
from trajforge.schemas.records import Artifact, Step, Trajectory, TreeNode
from trajforge.schemas.toolcalls import step_fields
from trajforge.synthesizers.pairs import sibling_pairs
from trajforge.synthesizers.search import Path_, SearchResult, SearchSettings, search_key

TRAJECTORIES, NODES, PAIRS, ARTIFACTS = "trajectories", "nodes", "pairs", "artifacts"
# Staged beside the tables, never committed: what a stage dropped, by reason, summed into runs.counts.
COUNTS = "counts"
Row = tuple[str, dict[str, Any]]  # (table, row)


def item_key(policy: str, settings: SearchSettings, revision: str | None = None) -> dict[str, Any]:
    """The search key of a (task, policy) item, part of every id it produces. The model's
    weights (or revision) are part of it: new weights make new data."""
    key = search_key(settings)
    fingerprint = model_fingerprint(policy, revision)
    return {**key, "model": fingerprint} if fingerprint else key


def search_records(
    task: dict[str, Any],
    policy: str,
    key: dict[str, Any],
    result: SearchResult,
    settings: SearchSettings,
    *,
    run_id: str,
    keep_terminal_paths: bool = False,
    pair_gap: float = 0.1,
    tools: list[dict[str, Any]] | None = None,
) -> list[Row]:
    """Rows of one (task, policy) search. `task` is a Task row (task_id, env, ...); `key` its
    `item_key`. Every sample of best_of_n is data; of a tree, the best path unless
    `keep_terminal_paths`. The sibling pairs the mining drops are counted by reason (COUNTS).
    `tools`: the environment's declared tools, when its actions are calls."""
    out: list[Row] = []
    tree = result.root is not None
    paths = result.paths[:1] if tree and not keep_terminal_paths else result.paths
    share = len(paths) or 1  # the search's cost, spread over what it produced
    for rank, path in enumerate(paths):
        record = trajectory(task, policy, key, path, result, settings, share, rank, run_id, tools)
        out.append((TRAJECTORIES, record.row()))
        for index, png in sorted(path.screenshots.items()):
            shot = Artifact.make(record.trajectory_id, index, "screenshot", "image/png", png)
            out.append((ARTIFACTS, shot.row()))
    if not tree:
        return out
    dropped: Counter = Counter()
    node_ids: dict[int, str] = {}
    for node in result.nodes:
        nid = ids.node_id(task["task_id"], policy, key, list(node.path))
        node_ids[id(node)] = nid
        row = TreeNode(
            node_id=nid,
            task_id=task["task_id"],
            parent_id=node_ids.get(id(node.parent)),
            depth=node.depth,
            action=node.action,
            visits=node.visits,
            value=round(node.value, 9),
            prior=node.prior,
            reward=node.reward,
            terminal=node.terminal,
            run_id=run_id,
            critic=node.critic,
        ).row()
        out.append((NODES, row))
    best = result.paths[0] if result.paths else None
    if best is not None and best.success:
        pairs = sibling_pairs(
            result.root,
            [s.row() for s in best.steps],
            env=task["env"],
            instruction=result.instruction,
            task_id=task["task_id"],
            gap=pair_gap,
            run_id=run_id,
            origin={"policy": policy, "search": key},
            dropped=dropped,
        )
        out += [(PAIRS, pair.row()) for pair in pairs]
        out += count_rows(dropped, "pairs:mcts_sibling", task["task_id"], {"policy": policy, "search": key})
    return out


def count_rows(dropped: Counter, stage: str, task_id: str, unit: dict[str, Any] | None = None) -> list[Row]:
    """COUNTS rows of what one unit of work (a task's mining, or one item's: `unit`) of `stage`
    dropped, as `dropped:<stage's table>:<reason>`. Their ids let a replayed bundle count once,
    and a retry drop and recount a re-mined task."""
    table = stage.partition(":")[0]
    return [
        (
            COUNTS,
            {
                "count_id": ids.count_id(stage, task_id, unit or {}, reason),
                "task_id": task_id,
                "stage": stage,
                "key": f"dropped:{table}:{reason}",
                "n": n,
            },
        )
        for reason, n in sorted(dropped.items())
        if n
    ]


def trajectory(
    task: dict[str, Any],
    policy: str,
    key: dict[str, Any],
    path: Path_,
    result: SearchResult,
    settings: SearchSettings,
    share: int,
    rank: int,
    run_id: str,
    tools: list[dict[str, Any]] | None = None,
) -> Trajectory:
    """One path of a search as a Trajectory with `1/share` of the search's cost (the rank-0 path
    takes the remainder of the environment steps). A tree's paths are named by their actions,
    samples by their index."""
    if result.root is not None:
        tid = ids.tree_trajectory_id(task["task_id"], policy, key, list(path.key))
    else:
        tid = ids.trajectory_id(task["task_id"], policy, key, path.sample)
    return Trajectory(
        trajectory_id=tid,
        task_id=task["task_id"],
        env=task["env"],
        instruction=result.instruction,
        search=settings.method,
        policy=policy,
        steps=with_tool_calls(path.steps, path.final_observation) if tools else path.steps,
        num_steps=len(path.steps),
        total_reward=path.total_reward,
        success=path.success,
        tokens_in=result.tokens_in // share,
        tokens_out=result.tokens_out // share,
        cost_usd=result.cost_usd / share,
        model_calls=result.model_calls // share,
        cached_calls=result.cached_calls // share,
        cached_tokens_in=result.cached_tokens_in // share,
        cached_tokens_out=result.cached_tokens_out // share,
        cached_cost_usd=result.cached_cost_usd / share,
        env_steps=result.env_steps // share + (result.env_steps % share if rank == 0 else 0),
        wall_s=result.wall_s / share,
        final_observation=path.final_observation,
        stop_reason=path.stop_reason,
        run_id=run_id,
        tools=ids.canonical_json(tools) if tools else None,
    )


def with_tool_calls(steps: list[Step], final_observation: str) -> list[Step]:
    """Steps whose actions are tool calls, with each call's name, arguments and result (what the
    environment answered: the next step's observation, or the final one)."""
    results = [s.observation for s in steps[1:]] + [final_observation]
    return [
        step.model_copy(update=step_fields(step.action, result))
        for step, result in zip(steps, results, strict=True)
    ]
