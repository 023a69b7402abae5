"""MCTS (as in Agent Q): PUCT selection with the policy's priors (uniform when it has none),
lazy expansion of up to k candidate actions per node, leaf evaluation by a short rollout of
the policy, backup of returns, terminal rewards from the environment's own verifier. With a
critic (AI feedback), selection uses (1 - w) * Q + w * the critic's value of each action.
Branching restores the environment's snapshot when it has one, otherwise replays the action
prefix from reset; every node caches its observation, so no prefix is stepped twice.
"""

from __future__ import annotations

import math
import random
import time

from trajforge.environments.base import Environment, TaskSpec
from trajforge.schemas.records import Step
from trajforge.synthesizers.policies import Context, Policy
from trajforge.synthesizers.search.metering import TokenMeter
from trajforge.synthesizers.search.navigator import BudgetSpent, Navigator
from trajforge.synthesizers.search.results import Node, Path_, SearchResult, path_rank
from trajforge.synthesizers.search.settings import Critic, SearchSettings


def run_mcts(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,
) -> SearchResult:
    return MCTS(env, task, policy, settings, seed, critic).run()


class MCTS:
    def __init__(
        self,
        env: Environment,
        task: TaskSpec,
        policy: Policy,
        settings: SearchSettings,
        seed: int,
        critic: Critic | None = None,
    ):
        self.env, self.policy, self.settings = env, policy, settings
        self.cfg = settings.mcts
        self.critic = critic if self.cfg.critic_weight > 0 else None
        self.rng = random.Random(seed)
        self.nav = Navigator(
            env, task, self.cfg.branching, settings.budget.env_steps, settings.max_observation_chars
        )
        self.terminal_paths: dict[tuple[str, ...], Path_] = {}
        self.instruction = ""
        self.root: Node | None = None

    def run(self) -> SearchResult:
        start = time.monotonic()
        budget = self.settings.budget
        reset, first = self.nav.root()
        self.instruction = reset.instruction
        root = Node(path=(), parent=None, prior=1.0, observation=first.observation, stepped=True)
        root.admissible = first.admissible
        self.root = root
        sims, stop = 0, "simulations"
        tokens = TokenMeter(self.policy, budget.tokens, self.critic)
        while sims < budget.simulations:
            if time.monotonic() - start > budget.wall_s:
                stop = "wall_s"
                break
            if tokens.spent():
                stop = "tokens"
                break
            try:
                self._simulate(root)
            except BudgetSpent:
                stop = "env_steps"
                break
            sims += 1
            if root.visits and self._exhausted(root):
                stop = "tree_exhausted"
                break
        return self._result(root, sims, start, stop)

    def _result(self, root: Node, simulations: int, start: float, stop: str) -> SearchResult:
        """The tree as a search's result: its paths (best first), every node, what it spent."""
        return SearchResult(
            paths=self._paths(),
            nodes=list(self._walk(root)),
            env_steps=self.nav.env_steps,
            simulations=simulations,
            wall_s=time.monotonic() - start,
            instruction=self.instruction,
            stop_reason=stop,
            root=root,
        )

    # -- one simulation: select, expand one child, evaluate it, back up ---------------------
    def _simulate(self, root: Node) -> None:
        path, node = [root], root
        while not node.terminal and node.depth < self.settings.max_steps:
            if node.children is None:
                node.children = self._candidates(node)
            if not node.children:
                break
            child = self._select(node)
            if not child.stepped:
                self._step_into(node, child)
                path.append(child)
                node = child
                break
            path.append(child)
            node = child
        value = 0.0 if node.terminal or node.depth >= self.settings.max_steps else self._evaluate(node)
        self._backup(path, value)

    def _candidates(self, node: Node) -> list[Node]:
        """Up to k distinct admissible actions, with the policy's priors (uniform if none)."""
        actions = sorted(set(node.admissible))
        priors_of = getattr(self.policy, "priors", None)
        ctx = Context(self.env, self.instruction, node.observation, list(node.admissible))
        priors = priors_of(ctx) if priors_of else {}
        if len(actions) > self.cfg.expand_k:
            if priors:
                actions = sorted(actions, key=lambda a: -priors.get(a, 0.0))[: self.cfg.expand_k]
            else:
                actions = sorted(self.rng.sample(actions, self.cfg.expand_k))
        weights = [priors.get(a, 0.0) for a in actions] if priors else [1.0] * len(actions)
        total = sum(weights) or 1.0
        feedback = self.critic.values(self.instruction, node.observation, actions) if self.critic else {}
        return [
            Node(path=(*node.path, a), parent=node, prior=w / total, critic=feedback.get(a))
            for a, w in zip(actions, weights, strict=True)
        ]

    def _select(self, node: Node) -> Node:
        scale = self.cfg.c_puct * math.sqrt(node.visits + 1)
        return max(node.children or [], key=lambda c: self._q(c) + scale * c.prior / (1 + c.visits))

    def _q(self, node: Node) -> float:
        """The tree's Q, mixed with the critic's value where it gave one (Agent Q)."""
        if node.critic is None:
            return node.q
        w = self.cfg.critic_weight
        return (1 - w) * node.q + w * node.critic

    def _step_into(self, parent: Node, child: Node) -> None:
        visit = self.nav.visit(parent.path, child.action or "")
        child.stepped = True
        child.reward, child.terminal, child.success = visit.reward, visit.done, visit.success
        child.observation, child.admissible = visit.observation, visit.admissible
        if visit.done:
            self._record_terminal(self._tree_steps(child), child.observation, child.success)

    def _evaluate(self, node: Node) -> float:
        """A short rollout of the policy from the node; its rewards are the node's value."""
        self.policy.start(self.rng.randrange(2**63))
        prefix, observation, admissible = node.path, node.observation, node.admissible
        steps: list[Step] = []
        for _ in range(min(self.cfg.rollout_depth, self.settings.max_steps - node.depth)):
            if not admissible:
                break
            if getattr(self.policy, "reads_env_state", False):
                self.nav.goto(prefix)  # e.g. the oracle asks the environment for its walkthrough
            ctx = Context(self.env, self.instruction, observation, admissible)
            action = self.policy.act(ctx).action
            visit = self.nav.visit(prefix, action)
            steps.append(
                Step(
                    index=node.depth + len(steps),
                    observation=observation,
                    action=action,
                    reward=visit.reward,
                    done=visit.done,
                    admissible=list(admissible),
                )
            )
            prefix, observation, admissible = (*prefix, action), visit.observation, visit.admissible
            if visit.done:
                self._record_terminal(self._tree_steps(node) + steps, observation, visit.success)
                break
        return sum(s.reward for s in steps)

    @staticmethod
    def _backup(path: list[Node], value: float) -> None:
        ret = value
        for node in reversed(path):
            node.visits += 1
            node.value_sum += ret
            ret += node.reward

    def _exhausted(self, node: Node) -> bool:
        """Every reachable node is terminal or at the depth limit: nothing left to learn."""
        if node.terminal or node.depth >= self.settings.max_steps:
            return True
        if node.children is None or not node.stepped:
            return False
        return all(self._exhausted(c) for c in node.children)

    # -- outputs ----------------------------------------------------------------------------
    def _tree_steps(self, node: Node) -> list[Step]:
        chain = []
        while node.parent is not None:
            chain.append(node)
            node = node.parent
        chain.reverse()
        return [
            Step(
                index=i,
                observation=(c.parent.observation if c.parent else ""),
                action=c.action or "",
                reward=c.reward,
                done=c.terminal,
                admissible=list(c.parent.admissible) if c.parent and c.parent.admissible else None,
            )
            for i, c in enumerate(chain)
        ]

    def _record_terminal(self, steps: list[Step], final: str, success: bool | None) -> None:
        key = tuple(s.action for s in steps)
        if key not in self.terminal_paths:
            total = round(sum(s.reward for s in steps), 9)
            self.terminal_paths[key] = Path_(steps, total, bool(success), final, "done", key)

    def _greedy(self) -> Path_:
        """The most visited line of play from the root, when no terminal path was found."""
        node = self.root
        assert node is not None
        while node.children and any(c.stepped for c in node.children):
            node = max((c for c in node.children if c.stepped), key=lambda c: (c.visits, c.q, c.path))
        steps = self._tree_steps(node)
        return Path_(
            steps,
            round(sum(s.reward for s in steps), 9),
            False,
            node.observation,
            "search_budget",
            tuple(s.action for s in steps),
        )

    def _paths(self) -> list[Path_]:
        found = sorted(self.terminal_paths.values(), key=path_rank)
        if not found or not found[0].success:
            found.insert(0, self._greedy())
            found.sort(key=path_rank)
        for p in found:
            self._attach_values(p)
            p.screenshots = self._screenshots(p.key)
        return found

    def _screenshots(self, key: tuple[str, ...]) -> dict[int, bytes]:
        shots = {}
        for i in range(len(key) + 1):
            visit = self.nav.cache.get(key[:i])
            if visit is not None and visit.screenshot:
                shots[i] = visit.screenshot
        return shots

    def _attach_values(self, path: Path_) -> None:
        """Per-step values for process reward data: the tree's Q where the step is in the tree,
        the observed return-to-go where the path left the tree in a rollout."""
        node, to_go = self.root, [0.0] * (len(path.steps) + 1)
        for i in range(len(path.steps) - 1, -1, -1):
            to_go[i] = to_go[i + 1] + path.steps[i].reward
        for i, step in enumerate(path.steps):
            child = _child(node, step.action) if node else None
            step.value = round(child.q, 9) if child is not None and child.visits else round(to_go[i], 9)
            node = child

    def _walk(self, node: Node):
        if node.stepped:
            yield node
            for child in node.children or []:
                yield from self._walk(child)


def _child(node: Node, action: str) -> Node | None:
    for c in node.children or []:
        if c.action == action and c.stepped:
            return c
    return None
