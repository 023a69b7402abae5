"""Preference pairs mined from search results, in the chat format the exporter uses.

- 'mcts_sibling' (Agent Q): along a successful path, a sibling action whose Q is lower by at
  least `gap`. The prefix is the conversation up to that step; chosen/rejected are the
  assistant turns.
- 'trajectory' (AgentGym DPO): a success and a failure of the same task. The prefix is the
  system and first user turn; chosen/rejected are the rest of each conversation (JSON).

Candidates the mining drops are counted by reason in the caller's `dropped` Counter:
`below_gap` and `unvisited` (a sibling with no Q yet) for sibling pairs, `different_start` and
`over_limit` (beyond max_pairs) for trajectory pairs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from itertools import product
from typing import Any

from trajforge.schemas import conversation, ids
from trajforge.schemas.records import Pair


def _json(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, ensure_ascii=False)


def _pair(
    task_id: str,
    step_index: int,
    prefix: str,
    chosen: str,
    rejected: str,
    qc,
    qr,
    source,
    run_id,
    origin: dict[str, Any] | None = None,
) -> Pair:
    """`origin`: the policy and search settings of the tree a sibling pair comes from."""
    return Pair(
        pair_id=ids.pair_id(task_id, step_index, prefix, chosen, rejected, source, origin),
        task_id=task_id,
        step_index=step_index,
        prefix=prefix,
        chosen=chosen,
        rejected=rejected,
        q_chosen=qc,
        q_rejected=qr,
        source=source,
        run_id=run_id,
        policy=(origin or {}).get("policy"),
    )


def sibling_pairs(
    root: Any,
    steps: list[dict[str, Any]],
    *,
    env: str,
    instruction: str,
    task_id: str,
    gap: float,
    run_id: str | None = None,
    origin: dict[str, Any] | None = None,
    dropped: Counter | None = None,
) -> list[Pair]:
    """Pairs at each tree node along `steps` (a successful path's step rows); `origin` names
    the tree: {"policy": spec, "search": search_key}."""
    pairs, node = [], root
    dropped = Counter() if dropped is None else dropped
    for i, step in enumerate(steps):
        chosen = next((c for c in node.children or [] if c.action == step["action"] and c.stepped), None)
        if chosen is None or not chosen.visits:
            break  # the path left the tree (a rollout found the rest)
        prefix = _json(conversation.messages(env, instruction, steps, upto=i))
        chosen_text = conversation.assistant_text(step["action"], step.get("thought"))
        for sib in node.children or []:
            if sib is chosen:
                continue
            if not sib.visits or chosen.q - sib.q < gap:
                dropped["unvisited" if not sib.visits else "below_gap"] += 1
                continue
            rejected = conversation.assistant_text(sib.action, None)
            pairs.append(
                _pair(
                    task_id, i, prefix, chosen_text, rejected, chosen.q, sib.q, "mcts_sibling", run_id, origin
                )
            )
        node = chosen
    return pairs


def trajectory_pairs(
    trajectories: Iterable[dict[str, Any]], *, max_pairs: int = 4, dropped: Counter | None = None
) -> list[Pair]:
    """Success x failure pairs of one task's trajectories, the shortest successes first."""
    dropped = Counter() if dropped is None else dropped
    rows = sorted(trajectories, key=lambda t: (t["num_steps"], t["trajectory_id"]))
    wins = [t for t in rows if t["success"]]
    losses = sorted(
        (t for t in rows if t["success"] is False), key=lambda t: (t["total_reward"], t["trajectory_id"])
    )
    out = []
    candidates = list(product(wins, losses))
    if len(candidates) > max_pairs:
        dropped["over_limit"] += len(candidates) - max_pairs
    for win, loss in candidates[:max_pairs]:
        whole_w = conversation.messages(win["env"], win["instruction"], win["steps"])
        whole_l = conversation.messages(loss["env"], loss["instruction"], loss["steps"])
        if len(whole_w) < 3 or len(whole_l) < 3 or whole_w[:2] != whole_l[:2]:
            dropped["different_start"] += 1  # not a fair comparison
            continue
        out.append(
            _pair(
                win["task_id"],
                0,
                _json(whole_w[:2]),
                _json(whole_w[2:]),
                _json(whole_l[2:]),
                win["total_reward"],
                loss["total_reward"],
                "trajectory",
                win.get("run_id"),
            )
        )
    return out
