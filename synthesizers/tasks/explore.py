"""Exploration: an archive of distinct states keyed by the signature of their facts (Go-Explore's
cells), returning to little-visited ones (by snapshot where the environment has them, else by
replaying the prefix from reset) and stepping with preference for actions not yet tried there."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trajforge.environments import goals
from trajforge.environments.base import TaskSpec
from trajforge.environments.goals import Fact


def signature(facts: frozenset[Fact], where: str = "") -> str:
    """A cell's key: its facts, and where the agent is when the environment says (a web page:
    navigating changes no fact, yet a product page is a state worth returning to)."""
    return hashlib.sha256(repr((sorted(facts), where)).encode()).hexdigest()[:16]


def _where(env: Any) -> str:
    locate = getattr(env, "location", None)
    return locate() if callable(locate) else ""


@dataclass
class Cell:
    prefix: tuple[str, ...]  # the shortest known actions from reset
    facts: frozenset[Fact]
    visits: int = 0
    snapshot: Any = None
    lost: bool = False  # the environment ended the episode in failure here
    terminal: bool = False  # the episode ended here: not expanded


@dataclass
class Archive:
    base: TaskSpec
    cells: dict[str, Cell] = field(default_factory=dict)
    root: str = ""
    env_steps: int = 0
    tried: Counter = field(default_factory=Counter)  # (cell signature, action) -> times taken
    trace: list[tuple[tuple[str, ...], frozenset[Fact]]] = field(default_factory=list)  # every state seen

    @property
    def reset_facts(self) -> frozenset[Fact]:
        return self.cells[self.root].facts

    def holding(self, goal: tuple[Fact, ...]) -> Cell | None:
        """The cell with the shortest prefix where every fact of `goal` holds."""
        found = [c for c in self.cells.values() if not c.lost and set(goal) <= c.facts]
        return min(found, key=lambda c: (len(c.prefix), c.prefix), default=None)


def free_play(base: TaskSpec) -> TaskSpec:
    return TaskSpec(goals.format_env_task(base.env_task, []), base.seed)


def explore(env: Any, base: TaskSpec, steps: int, seed: int, horizon: int = 6) -> Archive:
    """Explore one instance for about `steps` environment steps (returns by replay count too).
    `env` is wrapped by environments.goals."""
    rng = random.Random(seed)
    archive = Archive(base)
    env.reset(free_play(base))
    snap = env.supports_snapshot
    saved = callable(getattr(env, "save_state", None))  # a server-side snapshot (the web shop)

    def keep() -> Any:
        return env.snapshot() if snap else env.save_state() if saved else None

    root = Cell((), env.facts(), snapshot=keep())
    archive.root = signature(root.facts, _where(env))
    archive.cells[archive.root] = root
    while archive.env_steps < steps:
        sig, cell = _choose(archive, rng)
        cell.visits += 1
        if snap:
            env.restore(cell.snapshot)
        elif saved and cell.snapshot is not None:
            env.load_state(cell.snapshot, list(cell.prefix))
            archive.env_steps += 1  # one navigation
        else:
            env.reset(free_play(base))
            for action in cell.prefix:
                env.step(action)
            archive.env_steps += len(cell.prefix)
        path = list(cell.prefix)
        for _ in range(horizon):
            actions = env.admissible_actions()
            if not actions or archive.env_steps >= steps:
                break
            action = _pick(archive.tried, sig, actions, rng)
            outcome = env.step(action)
            archive.env_steps += 1
            path.append(action)
            facts = env.facts()
            archive.trace.append((tuple(path), facts))
            sig = signature(facts, _where(env))
            known = archive.cells.get(sig)
            if known is None:
                known = archive.cells[sig] = Cell(
                    tuple(path), facts, snapshot=None if outcome.done else keep()
                )
            elif len(path) < len(known.prefix):
                known.prefix = tuple(path)
                if not outcome.done:
                    known.snapshot = keep()
            if outcome.done:
                known.terminal = True
                known.lost = known.lost or outcome.success is False
                break
    return archive


def _choose(archive: Archive, rng: random.Random) -> tuple[str, Cell]:
    """A cell to return to, favouring the little-visited (weight 1/sqrt(1+visits))."""
    open_cells = [(s, c) for s, c in archive.cells.items() if not c.terminal]
    weights = [1.0 / (1 + c.visits) ** 0.5 for _, c in open_cells]
    return rng.choices(open_cells, weights)[0]


def _pick(tried: Counter, sig: str, actions: list[str], rng: random.Random) -> str:
    """An action not yet tried here if any: a verb first, uniformly (so a page's many `type`
    variants do not drown its few clicks), then the least-tried action of that verb. "Here" is
    the state's signature and the set of actions on offer (on the web: which page)."""
    here = (sig, hashlib.sha256("\n".join(sorted(actions)).encode()).hexdigest()[:12])
    by_verb: dict[str, list[str]] = {}
    for a in actions:
        by_verb.setdefault(a.split(" ", 1)[0], []).append(a)
    fresh = {v: [a for a in acts if not tried[(*here, a)]] for v, acts in by_verb.items()}
    verbs = sorted(v for v in fresh if fresh[v]) or sorted(by_verb)
    options = fresh.get(verb := rng.choice(verbs)) or by_verb[verb]
    least = min(tried[(*here, a)] for a in options)
    action = rng.choice([a for a in options if tried[(*here, a)] == least])
    tried[(*here, action)] += 1
    return action
