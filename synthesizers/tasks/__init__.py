"""Task synthesis: tasks that carry verifiable goals (environments.goals), proposed by templates
filled from the instance, by exploring and relabelling what changed, and by a curriculum from
solve rates; kept only when a fresh instance confirms them, then deduplicated.

Modules: candidates (a candidate and its rows), explore (the archive of states), templates,
relabel, verify, solve (solve rates), curriculum, dedup, synthesize (one environment end to end).
"""

from trajforge.synthesizers.tasks.candidates import DROPS, Candidate
from trajforge.synthesizers.tasks.dedup import Embedder, EvalItem, load_eval_set
from trajforge.synthesizers.tasks.synthesize import SOURCES, Synthesis, SynthesisSettings, synthesize

__all__ = [
    "DROPS",
    "SOURCES",
    "Candidate",
    "Embedder",
    "EvalItem",
    "Synthesis",
    "SynthesisSettings",
    "load_eval_set",
    "synthesize",
]
