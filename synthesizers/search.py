"""Trajectory search over any Environment: `rollout`, `best_of_n` and `mcts` share one entry
point (`search`) and one budget, so their comparisons are fair.

MCTS (as in Agent Q): PUCT selection with the policy's priors (uniform when it has none),
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
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trajforge.environments.base import Environment, Reset, StepOutcome, TaskSpec
from trajforge.inference.context import shorten
from trajforge.schemas import ids
from trajforge.schemas.records import Step
from trajforge.synthesizers.policies import Context, Policy
from trajforge.synthesizers.rollout import Episode, rollout

Branching = Literal["auto", "snapshot", "replay"]
MAX_OBSERVATION_CHARS = 20_000  # an observation's cap, as the run config's default


@dataclass(frozen=True)
class Budget:
    """Per task. Every method stops at the first limit it reaches."""

    env_steps: int = 400
    simulations: int = 10_000
    wall_s: float = 300.0
    # Model tokens (in + out, priors included; answers from the request cache count as they did when
    # paid, so a replayed search stops where the original did); None: no limit.
    tokens: int | None = None


@dataclass(frozen=True)
class MCTSSettings:
    expand_k: int = 32
    c_puct: float = 0.5
    rollout_depth: int = 1
    branching: Branching = "auto"
    critic_weight: float = 0.0  # w of the critic's values in selection (0: no critic)
    critic: str | None = None  # the critic's model spec (part of the search's identity)


class Critic(Protocol):
    """Values in [0, 1] for a node's candidate actions ({}: no opinion); validators.critic."""

    client: Any

    def values(self, instruction: str, observation: str, actions: list[str]) -> dict[str, float]: ...


@dataclass(frozen=True)
class SearchSettings:
    method: Literal["rollout", "best_of_n", "mcts"] = "rollout"
    max_steps: int = 40
    samples: int = 1
    budget: Budget = field(default_factory=Budget)
    mcts: MCTSSettings = field(default_factory=MCTSSettings)
    max_observation_chars: int = MAX_OBSERVATION_CHARS  # longer ones are cut where they enter


@dataclass
class Path_:
    """A sequence of steps found by a search, ending in `success` (None: not terminal)."""

    steps: list[Step]
    total_reward: float
    success: bool | None
    final_observation: str
    stop_reason: str
    key: tuple[str, ...] = ()  # the actions, the path's identity
    sample: int = 0  # which of a best_of_n's samples this is
    screenshots: dict[int, bytes] = field(default_factory=dict)  # the page before step i

    @classmethod
    def from_episode(cls, ep: Episode, sample: int) -> Path_:
        key = tuple(s.action for s in ep.steps)
        return cls(
            ep.steps,
            ep.total_reward,
            ep.success,
            ep.final_observation,
            ep.stop_reason,
            key,
            sample,
            ep.screenshots,
        )


@dataclass
class Node:
    path: tuple[str, ...]
    parent: Node | None
    prior: float
    reward: float = 0.0  # reward of the step that entered this node
    terminal: bool = False
    success: bool | None = None
    observation: str = ""
    admissible: list[str] = field(default_factory=list)
    stepped: bool = False
    visits: int = 0
    value_sum: float = 0.0  # sum of returns after this node
    children: list[Node] | None = None
    critic: float | None = None  # the critic's value of the action that leads here

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def action(self) -> str | None:
        return self.path[-1] if self.path else None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def q(self) -> float:
        """The value of the action that leads here: its reward plus what follows."""
        return self.reward + self.value


@dataclass
class SearchResult:
    paths: list[Path_]  # best first
    nodes: list[Node] = field(default_factory=list)
    env_steps: int = 0
    simulations: int = 0
    wall_s: float = 0.0
    instruction: str = ""
    stop_reason: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cached_calls: int = 0
    cached_tokens_in: int = 0  # usage answered from the request cache: paid before, not now
    cached_tokens_out: int = 0
    cached_cost_usd: float = 0.0  # what those answers cost when they were paid
    root: Node | None = None  # the search tree, for MCTS


class BudgetSpent(Exception):
    """Raised inside a simulation when the environment-step budget runs out."""


@dataclass
class Visit:
    """What the environment showed at the end of an action prefix."""

    observation: str
    reward: float
    done: bool
    success: bool | None
    admissible: list[str]
    state: Any = None  # the environment's snapshot, in snapshot branching
    screenshot: bytes | None = None


class Navigator:
    """Answers "what happens after this prefix and this action?", stepping the environment
    only for prefixes never seen before: every visited prefix is cached, so no prefix is
    stepped twice. To step from a prefix, it restores the prefix's snapshot when it can,
    otherwise replays the prefix from reset. Every real environment step is counted."""

    def __init__(
        self,
        env: Environment,
        task: TaskSpec,
        branching: Branching,
        step_budget: int,
        max_observation_chars: int = MAX_OBSERVATION_CHARS,
    ) -> None:
        use_snapshot = branching == "snapshot" or (branching == "auto" and env.supports_snapshot)
        if branching == "snapshot" and not env.supports_snapshot:
            raise ValueError(f"branching: {env.name} has no snapshot/restore; use replay or auto")
        self.env, self.task, self.snapshots = env, task, use_snapshot
        self.step_budget = step_budget
        self.max_observation_chars = max_observation_chars
        self.env_steps = 0
        self.cache: dict[tuple[str, ...], Visit] = {}
        self._at: tuple[str, ...] | None = None  # the prefix the environment is at, if known

    def root(self) -> tuple[Reset, Visit]:
        reset = self._reset()
        visit = Visit(
            shorten(reset.observation, self.max_observation_chars),
            0.0,
            False,
            None,
            self.env.admissible_actions(),
            self._snapshot(),
            reset.info.get("screenshot"),
        )
        self.cache[()] = visit
        return reset, visit

    def visit(self, prefix: tuple[str, ...], action: str) -> Visit:
        path = (*prefix, action)
        if path in self.cache:
            return self.cache[path]
        self.goto(prefix)
        outcome = self._step(action)
        self._at = path
        admissible = [] if outcome.done else self.env.admissible_actions()
        visit = Visit(
            shorten(outcome.observation, self.max_observation_chars),
            outcome.reward,
            outcome.done,
            outcome.success,
            admissible,
            self._snapshot(),
            outcome.info.get("screenshot"),
        )
        self.cache[path] = visit
        return visit

    def goto(self, path: tuple[str, ...]) -> None:
        """Put the environment itself at the end of a prefix it has visited."""
        if self._at == path:
            return
        if self.snapshots:
            self.env.restore(self.cache[path].state)
            self._at = path
            return
        at = self._at
        if at is None or path[: len(at)] != at:
            self._reset()
            at = ()
        for i, action in enumerate(path[len(at) :], start=len(at) + 1):
            self._step(action)
            self._at = path[:i]

    def _snapshot(self) -> Any:
        return self.env.snapshot() if self.snapshots else None

    def _reset(self) -> Reset:
        reset = self.env.reset(self.task)
        self._at = ()
        return reset

    def _step(self, action: str) -> StepOutcome:
        if self.env_steps >= self.step_budget:
            raise BudgetSpent
        self.env_steps += 1
        self._at = None  # unknown until the caller says where the step led
        return self.env.step(action)


def search_key(settings: SearchSettings) -> dict[str, Any]:
    """What decides a search's outcome; part of every id it produces (wall time is not)."""
    key: dict[str, Any] = {"search": settings.method, "max_steps": settings.max_steps}
    if settings.method != "rollout":
        key["budget"] = {"env_steps": settings.budget.env_steps, "simulations": settings.budget.simulations}
        if settings.budget.tokens is not None:  # only when set: ids of unbounded runs stay as they were
            key["budget"]["tokens"] = settings.budget.tokens
    if settings.method == "best_of_n":
        key["samples"] = settings.samples
    if settings.max_observation_chars != MAX_OBSERVATION_CHARS:  # ids of default runs stay as they were
        key["max_observation_chars"] = settings.max_observation_chars
    if settings.method == "mcts":
        m = settings.mcts
        key["mcts"] = {"expand_k": m.expand_k, "c_puct": m.c_puct, "rollout_depth": m.rollout_depth}
        if m.critic_weight > 0:  # only when used: ids of searches without a critic stay as they were
            key["mcts"] |= {"critic_weight": m.critic_weight, "critic": m.critic}
    return key


def search_seed(task_id: str, policy: str, settings: SearchSettings) -> int:
    """The seed of a (task, policy) search: the same wherever and whenever it runs."""
    return int(ids.content_id("search", task=task_id, policy=policy, key=search_key(settings))[:8], 16)


def search(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,
) -> SearchResult:
    """`critic` is used by MCTS when settings.mcts.critic_weight > 0; its tokens count as the
    search's, like the policy's."""
    before = _usage(policy, critic)
    if settings.method == "mcts":
        result = MCTS(env, task, policy, settings, seed, critic).run()
    else:
        result = sample_rollouts(env, task, policy, settings, seed)
    after = _usage(policy, critic)
    if after:  # a model policy: its client metered every call, priors and retries included
        result.tokens_in = after["tokens_in"] - before["tokens_in"]
        result.tokens_out = after["tokens_out"] - before["tokens_out"]
        result.cost_usd = after["cost_usd"] - before["cost_usd"]
        result.cached_calls = after["cached_calls"] - before["cached_calls"]
        result.model_calls = after["calls"] - before["calls"] + result.cached_calls
        spent = lambda key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
        result.cached_tokens_in = spent("cached_tokens_in")
        result.cached_tokens_out = spent("cached_tokens_out")
        result.cached_cost_usd = spent("cached_cost_usd")
    return result


def _usage(*users: Any) -> dict[str, Any]:
    """The summed stats of the metered model clients of a policy (and a critic); {} if none."""
    total: dict[str, Any] = {}
    for user in users:
        client = getattr(user, "client", None)
        if client is not None and hasattr(client, "stats"):
            for key, value in client.stats().items():
                if isinstance(value, int | float):  # not e.g. the circuit breaker's state
                    total[key] = total.get(key, 0) + value
    return total


class TokenMeter:
    """Model tokens a policy (and a critic) used since this meter was made (0 without a
    metered client), checked against the budget between simulations and between steps. Tokens
    of cached answers count: a replay spends the budget as the paid original did."""

    def __init__(self, policy: Policy, limit: int | None, critic: Critic | None = None) -> None:
        self.users, self.limit = [policy, critic], limit
        self.start = self._total()

    def _total(self) -> int:
        usage = _usage(*self.users)
        keys = ("tokens_in", "tokens_out", "cached_tokens_in", "cached_tokens_out")
        return sum(usage.get(k, 0) for k in keys)

    def left(self) -> int | None:
        return None if self.limit is None else self.limit - (self._total() - self.start)

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


def sample_rollouts(
    env: Environment, task: TaskSpec, policy: Policy, settings: SearchSettings, seed: int
) -> SearchResult:
    """`rollout` (one) and `best_of_n` (N) independent episodes within the budget."""
    start = time.monotonic()
    n = 1 if settings.method == "rollout" else settings.samples
    result = SearchResult(paths=[])
    rng = random.Random(seed)
    tokens = TokenMeter(policy, settings.budget.tokens)
    for sample in range(n):
        left = settings.budget.env_steps - result.env_steps
        wall_left = settings.budget.wall_s - (time.monotonic() - start)
        if left <= 0 or wall_left <= 0 or tokens.spent():
            break
        ep = rollout(
            env,
            task,
            policy,
            seed=rng.randrange(2**63),
            max_steps=min(settings.max_steps, left),
            timeout_s=wall_left,
            out_of_tokens=tokens.spent,
            max_observation_chars=settings.max_observation_chars,
        )
        result.instruction = ep.instruction
        result.env_steps += ep.env_steps
        result.simulations += 1
        result.tokens_in += ep.tokens_in
        result.tokens_out += ep.tokens_out
        result.paths.append(Path_.from_episode(ep, sample))
    result.paths.sort(key=_path_rank)
    result.wall_s = time.monotonic() - start
    return result


def _path_rank(p: Path_) -> tuple:
    return (not p.success, -p.total_reward, len(p.steps), p.key)


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
        return SearchResult(
            paths=self._paths(),
            nodes=list(self._walk(root)),
            env_steps=self.nav.env_steps,
            simulations=sims,
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
        found = sorted(self.terminal_paths.values(), key=_path_rank)
        if not found or not found[0].success:
            found.insert(0, self._greedy())
            found.sort(key=_path_rank)
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
