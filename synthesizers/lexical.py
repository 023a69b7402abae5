"""`lexical`: a policy that needs no model. Its priors favour the admissible actions that share
words with the instruction (and, less, with the observation); the rest share what is left
uniformly. `act` samples from the same priors, so MCTS's leaf rollouts follow them too.

An action's words are its own, lowercased and stripped of stop words and of the browser
grammar's verbs, with an element ref (`click e3`) replaced by the element's role and name as the
observation lists it (`[e3] button "Submit"`). Words are weighted by how rare they are among the
admissible actions (a word every action has tells nothing) and by how early the instruction
names them (instructions list their steps in order: "Select A and click Submit"). Typing or
selecting a text that the instruction spells out (a quoted value, a form field's value) earns a
strong bonus; an action whose effect is already in place (a checked box, a field that already
holds text of the instruction, the selected option) earns nothing.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass

from trajforge.synthesizers.policies import Context, Decision, sample

FLOOR = 1.0  # every action's score: the mass of actions that share nothing
INSTRUCTION_WEIGHT = 3.0  # per (rarity-weighted) word shared with the instruction
OBSERVATION_WEIGHT = 1.0  # per word shared with the observation but not the instruction
VALUE_BONUS = 6.0  # typing or selecting a text the instruction spells out

# fmt: off
STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "into", "on", "onto", "at", "by", "for",
    "from", "with", "without", "as", "is", "are", "be", "it", "its", "this", "that", "these", "those",
    "then", "than", "there", "here", "your", "you", "my", "me", "i", "we", "our", "all", "any", "each",
    "both", "some", "no", "not", "do", "does", "so", "if", "else", "when", "where", "which", "who",
    "what", "how", "can", "will", "should", "must", "please", "now",
})
# fmt: on
# The browser grammar's verbs (and its Enter key, which instructions use as a verb) name no target.
GRAMMAR_WORDS = frozenset({"click", "type", "select", "press", "enter"})
_TOKEN = re.compile(r"[a-z0-9]+")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_ELEMENT = re.compile(
    r'^\[(?P<ref>[^\]\s]+)\]\s+(?P<role>\S+)(?:\s+(?P<name>"(?:[^"\\]|\\.)*"))?(?P<rest>.*)$'
)
_VALUE = re.compile(r'value=("(?:[^"\\]|\\.)*")')


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def stem(word: str) -> str:
    """A plural's singular, crudely ("tabs" -> "tab"), so the instruction's words meet labels."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def words(text: str) -> list[str]:
    """Content words, stemmed, in order."""
    return [stem(t) for t in tokens(text) if t not in STOP_WORDS and t not in GRAMMAR_WORDS]


@dataclass(frozen=True)
class Element:
    """An interactive element as an observation lists it."""

    role: str
    name: str
    checked: bool
    value: str | None


def elements(observation: str) -> dict[str, Element]:
    """The observation's `[ref] role "name" ...` lines, by ref."""
    found = {}
    for line in observation.splitlines():
        match = _ELEMENT.match(line.strip())
        if match:
            rest = match["rest"]
            value = _VALUE.search(rest)
            found[match["ref"]] = Element(
                match["role"],
                _unquote(match["name"]) if match["name"] else "",
                re.search(r"\bchecked\b", rest) is not None,
                _unquote(value.group(1)) if value else None,
            )
    return found


def _unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text.strip('"')
    return value if isinstance(value, str) else text


def _contains(haystack: list[str], needle: list[str]) -> bool:
    """Whether `needle` occurs in `haystack` as a contiguous run of tokens."""
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


class LexicalPolicy:
    """See the module docstring."""

    spec = "lexical"
    reads_env_state = False

    def __init__(self) -> None:
        self._rng = random.Random(0)

    def start(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def act(self, ctx: Context) -> Decision:
        if not ctx.admissible:
            raise ValueError("no admissible action to choose from")
        return Decision(sample(self.priors(ctx), self._rng))

    def priors(self, ctx: Context) -> dict[str, float]:
        """Each admissible action's share of the scores, in sorted order (so a draw from them
        does not depend on the order the environment lists its actions in)."""
        scores = self.scores(ctx)
        total = sum(scores.values())
        return {a: scores[a] / total for a in sorted(scores)}

    def scores(self, ctx: Context) -> dict[str, float]:
        """Each admissible action's score: FLOOR plus what it shares with the task."""
        actions = list(dict.fromkeys(ctx.admissible))
        refs = elements(ctx.observation)
        instruction = words(ctx.instruction)
        said = tokens(ctx.instruction)
        # How early the instruction first names each word: 2 at its start, down to 1 at its end.
        early = {}
        for i, w in enumerate(instruction):
            early.setdefault(w, 2.0 - i / len(instruction))
        seen = set(words(ctx.observation)) - set(early)
        described = {a: self._describe(a, refs, said) for a in actions}
        rarity = _rarity([set(own) | set(label) for own, label, _, _ in described.values()])
        scores = {}
        for action, (own, label, text, done) in described.items():
            score = FLOOR
            if not done:
                score += INSTRUCTION_WEIGHT * sum(rarity[w] * early[w] for w in set(own + label) & set(early))
                score += OBSERVATION_WEIGHT * sum(rarity[w] for w in set(own) & seen)
                if text is not None and _contains(said, tokens(text)):
                    score += VALUE_BONUS
            scores[action] = score
        return scores

    @staticmethod
    def _describe(
        action: str, refs: dict[str, Element], said: list[str]
    ) -> tuple[list[str], list[str], str | None, bool]:
        """(the action's own words, its element's role and name, the text it types or selects,
        whether its effect is already in place)."""
        quoted = _QUOTED.findall(action)
        text = _unquote(quoted[-1]) if quoted else None
        parts = action.split()
        element = next((refs[p] for p in parts[1:2] if p in refs), None)
        if element is None:  # a text game's command, or `press "Enter"`: no element, no value typed
            return words(action), [], None, False
        own = words(_QUOTED.sub(" ", action).replace(parts[1], " ", 1)) + words(text or "")
        label = words(f"{element.role} {element.name}")
        value = (element.value or "").lower()
        if text is None:  # a click: done when it would only undo a checked box
            done = element.checked
        elif parts[0] == "type":  # done when the field holds text the instruction spells out
            done = bool(value) and _contains(said, tokens(value))
        else:  # select: done when the option is selected
            done = value == text.lower()
        return own, label, text, done


def _rarity(word_sets: list[set[str]]) -> dict[str, float]:
    """log(N / df) / log(N) per word over the actions' word sets: 1 for a word one action has,
    0 for a word every action has."""
    n = len(word_sets)
    df: dict[str, int] = {}
    for ws in word_sets:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    if n < 2:
        return dict.fromkeys(df, 1.0)
    return {w: math.log(n / k) / math.log(n) for w, k in df.items()}
