"""Task synthesis for one environment, without a model: explore each instance, propose goals from
templates and by relabelling, verify each candidate in a fresh instance, estimate solve rates
with the configured search, grow a curriculum from them, dedup, and return the rows for the lake
(`tasks` and `task_candidates`) with the counts of what was kept and dropped, and why."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trajforge.environments import goals, registry
from trajforge.environments.base import ConfigError
from trajforge.synthesizers.search import SearchSettings
from trajforge.synthesizers.tasks.candidates import Candidate
from trajforge.synthesizers.tasks.curriculum import children
from trajforge.synthesizers.tasks.dedup import EvalItem, dedup
from trajforge.synthesizers.tasks.explore import Archive, explore, free_play
from trajforge.synthesizers.tasks.relabel import relabel
from trajforge.synthesizers.tasks.solve import difficulty, solve_rate
from trajforge.synthesizers.tasks.templates import from_templates
from trajforge.synthesizers.tasks.verify import verify

SOURCES = ("template", "explored", "curriculum")


@dataclass(frozen=True)
class SynthesisSettings:
    instances: int = 2  # base tasks of the environment to synthesize on
    sources: tuple[str, ...] = SOURCES
    explore_steps: int = 200  # per instance
    horizon: int = 6  # steps per return to a cell
    per_instance: int = 12  # relabelled candidates per instance
    per_template: int = 2  # goals per template and instance
    attempts: int = 3  # searches per solve-rate estimate
    band: tuple[float, float] = (0.05, 0.75)
    rounds: int = 1  # curriculum rounds
    text_cap: int = 3
    embeddings: bool = True
    minimize: bool = True  # shorten witnesses, where the environment's steps are cheap (snapshots)


@dataclass
class Synthesis:
    tasks: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    env_steps: Counter = field(default_factory=Counter)  # by stage
    wall_s: Counter = field(default_factory=Counter)  # by stage
    kept: list[Candidate] = field(default_factory=list)
    archives: dict[tuple, Archive] = field(default_factory=dict)  # instance -> its exploration


def synthesize(
    env_name: str,
    env_options: dict[str, Any],
    settings: SynthesisSettings,
    search: SearchSettings,
    policy: Any,
    seed: int,
    run_id: str | None = None,
    known_ids: set[str] | frozenset[str] = frozenset(),
    eval_set: list[EvalItem] = (),  # type: ignore[assignment]
    embed: Any = None,
) -> Synthesis:
    unknown = set(settings.sources) - set(SOURCES)
    if unknown:
        raise ConfigError(f"tasks.sources: {sorted(unknown)} unknown; use some of {', '.join(SOURCES)}")
    out = Synthesis()
    explorer = goals.wrap(registry.make(env_name, **env_options))
    checker = goals.wrap(registry.make(env_name, **env_options))  # verification's fresh instance
    try:
        if not goals.supports_goals(explorer):
            raise ConfigError(
                f"env: {env_name} does not speak the goal contract; tasks cannot be synthesized"
            )
        bases = explorer.task_specs(settings.instances, seed)
        prepare = getattr(explorer, "prepare", None)
        if prepare is not None:
            prepare(bases)
        kinds = goals.kinds_of(explorer)
        proposed: list[Candidate] = []
        rejected: list[tuple[Candidate, str, str]] = []
        archives: dict[tuple, Archive] = {}
        for i, base in enumerate(bases):
            t = time.monotonic()
            archive = explore(explorer, base, settings.explore_steps, seed + i, settings.horizon)
            archives[(env_name, base.env_task, base.seed)] = archive
            out.env_steps["explore"] += archive.env_steps
            out.wall_s["explore"] += time.monotonic() - t
            t = time.monotonic()
            if "template" in settings.sources:
                explorer.reset(free_play(base))
                proposed += from_templates(
                    explorer, archive, env_name, kinds, out.counts, seed + i, settings.per_template, rejected
                )
            out.wall_s["template"] += time.monotonic() - t
            if "explored" in settings.sources:
                proposed += relabel(archive, env_name, kinds, out.counts, seed + i, settings.per_instance)
        for key in [k for k in out.counts if ":" in k and k.split(":")[0] in ("no_phrasing", "slot_absent")]:
            out.counts[f"dropped:{key}"] += out.counts.pop(key)
        if "no_witness" in out.counts:
            out.counts["dropped:no_witness"] += out.counts.pop("no_witness")
        for cand, reason, detail in rejected:
            out.candidates.append(cand.candidate_row("dropped", reason, detail, run_id))
        verified = _verify_all(checker, proposed, policy, search, settings, out, run_id)
        pool = list(verified)
        for _ in range(settings.rounds if "curriculum" in settings.sources else 0):
            kids = [k for c in pool for k in children(c, settings.band, archives.get(c.instance), kinds)]
            pool = _verify_all(checker, kids, policy, search, settings, out, run_id)
            verified += pool
        t = time.monotonic()

        def drop(c: Candidate, reason: str, detail: str) -> None:
            out.counts[f"dropped:{reason}"] += 1
            out.candidates.append(c.candidate_row("dropped", reason, detail, run_id))

        kept = dedup(
            verified, drop, known_ids, settings.text_cap, embed if settings.embeddings else None, eval_set
        )
        out.wall_s["dedup"] += time.monotonic() - t
        for c in kept:
            out.counts[f"kept:{c.source}"] += 1
            out.candidates.append(c.candidate_row("kept", run_id=run_id))
            out.tasks.append(c.task_row(difficulty(c.solve_rate, settings.band), run_id))
        out.kept, out.archives = kept, archives
    finally:
        explorer.close()
        checker.close()
    return out


def _verify_all(
    env: Any,
    cands: list[Candidate],
    policy: Any,
    search: SearchSettings,
    settings: SynthesisSettings,
    out: Synthesis,
    run_id: str | None,
) -> list[Candidate]:
    ok = []
    for c in cands:
        t = time.monotonic()
        out.counts[f"candidates:{c.source}"] += 1
        c, reason, detail = verify(env, c, minimize=settings.minimize and env.supports_snapshot)
        out.env_steps["verify"] += len(c.witness)
        out.wall_s["verify"] += time.monotonic() - t
        if reason is not None:
            out.counts[f"dropped:{reason}"] += 1
            out.candidates.append(c.candidate_row("dropped", reason, detail, run_id))
            continue
        t = time.monotonic()
        c, steps = solve_rate(env, c, policy, search, settings.attempts)
        out.env_steps["solve"] += steps
        out.wall_s["solve"] += time.monotonic() - t
        ok.append(c)
    return ok
