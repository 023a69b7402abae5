"""`best_first`: A*-style best-first search over actions (as in ToolChain*). A frontier of untried
actions is ordered by their path's cost; the cheapest is popped and stepped, its admissible
actions (up to mcts.expand_k) pushed in turn, until the first verified success or the budget.

A path's cost is the sum of its steps' costs, as ToolChain*'s g sums each step's cost and the
model's confidence in it: a step costs max(0, 1 - its reward + h), where h = -log(k * p) is the
heuristic of its action, p the policy's prior over the parent's k candidates (mixed with the
critic's values, normalised the same way, by mcts.critic_weight when a critic is configured).
A uniform p gives h = 0: breadth-first by steps taken minus rewards collected (the environment's
own signal). A favoured action costs less than a step, a doubted one more, and along the whole
path, not just its last action: a heuristic of the last action alone would reorder one level and
leave the search breadth-first (on the toy corridor it was hardly cheaper than a uniform prior).

It stops at the first success popped, as A* does: the cheapest solution its costs know; the
budget is a cap shared with the other methods, and what it leaves unspent shows in env steps.
Every popped node has visits 1 and, as its value, the best return found below it, so nodes rows
and sibling pairs (a popped sibling whose Q is `pair_gap` below the chosen action's) read as
MCTS's do. Ties in cost are broken by a seeded order: the same seed gives the same tree.
"""

from __future__ import annotations

import heapq
import math
import time

from trajforge.environments.base import Environment, TaskSpec
from trajforge.synthesizers.policies import Policy
from trajforge.synthesizers.search.mcts import MCTS
from trajforge.synthesizers.search.metering import TokenMeter
from trajforge.synthesizers.search.navigator import BudgetSpent
from trajforge.synthesizers.search.results import Node, Path_, SearchResult
from trajforge.synthesizers.search.settings import Critic, SearchSettings

MIN_SHARE = 1e-6  # of the uniform share: caps h of an action the prior all but rules out


def run_best_first(
    env: Environment,
    task: TaskSpec,
    policy: Policy,
    settings: SearchSettings,
    seed: int,
    critic: Critic | None = None,
) -> SearchResult:
    return BestFirst(env, task, policy, settings, seed, critic).run()


class BestFirst(MCTS):
    """MCTS's tree, candidates (priors, expand_k, the critic's values), stepping and outputs;
    only the order of expansion differs."""

    def run(self) -> SearchResult:
        start = time.monotonic()
        budget = self.settings.budget
        reset, first = self.nav.root()
        self.instruction = reset.instruction
        root = Node(path=(), parent=None, prior=1.0, observation=first.observation, stepped=True, visits=1)
        root.admissible = first.admissible
        self.root = root
        self.popped: list[Node] = [root]
        self.cost: dict[int, float] = {id(root): 0.0}  # g of each popped node (by id)
        self.doubt: dict[int, float] = {}  # h of each candidate's action (by id)
        frontier: list[tuple[float, float, int, Node]] = []
        self.pushed = 0
        self._expand(root, frontier)
        pops, stop = 0, "tree_exhausted"
        tokens = TokenMeter(self.policy, budget.tokens, self.critic)
        while frontier:
            if pops >= budget.simulations:
                stop = "simulations"
                break
            if time.monotonic() - start > budget.wall_s:
                stop = "wall_s"
                break
            if tokens.spent():
                stop = "tokens"
                break
            node = frontier[0][-1]
            try:
                self._step_into(node.parent or root, node)
            except BudgetSpent:
                stop = "env_steps"
                break
            heapq.heappop(frontier)
            pops += 1
            node.visits = 1
            self.popped.append(node)
            self.cost[id(node)] = self.cost[id(node.parent)] + _step_cost(node.reward, self.doubt[id(node)])
            _backup_best(node)
            if node.success:
                stop = "success"
                break
            if not node.terminal and node.depth < self.settings.max_steps:
                self._expand(node, frontier)
        return self._result(root, pops, start, stop)

    def _expand(self, node: Node, frontier: list[tuple[float, float, int, Node]]) -> None:
        node.children = self._candidates(node)
        for child in node.children:
            h = self.doubt[id(child)] = self._h(child, node.children)
            f = self.cost[id(node)] + _step_cost(0.0, h)  # its reward is known once stepped
            tie = self.rng.random()  # seeded: equal f, the same order for the same seed
            self.pushed += 1
            heapq.heappush(frontier, (f, tie, self.pushed, child))

    def _h(self, child: Node, siblings: list[Node]) -> float:
        share = child.prior
        valued = [s.critic for s in siblings if s.critic is not None]
        if self.critic is not None and child.critic is not None and sum(valued) > 0:
            w = self.cfg.critic_weight
            share = (1 - w) * share + w * child.critic / sum(valued)
        return -math.log(max(len(siblings) * share, MIN_SHARE))

    def _greedy(self) -> Path_:
        """Without a terminal success: the line to the popped node with the most reward, the
        deepest among those (the furthest the search got), the first popped among those."""
        order = {id(n): i for i, n in enumerate(self.popped)}
        node = max(self.popped, key=lambda n: (_return(n), n.depth, -order[id(n)]))
        steps = self._tree_steps(node)
        return Path_(
            steps,
            round(sum(s.reward for s in steps), 9),
            False,
            node.observation,
            "search_budget",
            tuple(s.action for s in steps),
        )


def _step_cost(reward: float, h: float) -> float:
    return max(0.0, 1.0 - reward + h)  # never negative, as best-first by cost needs


def _return(node: Node) -> float:
    """The rewards collected on the way to a node."""
    total = 0.0
    while node.parent is not None:
        total += node.reward
        node = node.parent
    return total


def _backup_best(node: Node) -> None:
    """Each ancestor's value becomes the best return found below it (visits stay 1)."""
    ret = 0.0
    while node.parent is not None:
        ret += node.reward
        node = node.parent
        node.value_sum = max(node.value_sum, ret)
