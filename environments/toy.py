"""A tiny deterministic environment for tests: walk a corridor, take the key, open the door.

Tasks are named `corridor-L-K` (corridor length L, key in room K). A task named with the
suffix `-crash` raises on its second step, so tests can prove that a crashing environment
fails one item and not the run; the option `crash_every=N` makes every Nth task such a one.
Likewise a task with the suffix `-hang` never returns from its second step (it sleeps
`hang_s`, a day by default), as a wedged environment would; `hang_every=N` makes every Nth
task such a one. The option `wall_text=N` writes N characters on the corridor's walls, into
every room's description: an observation as long as a big web page.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from trajforge.environments.base import EnvironmentFailure, Reset, StepOutcome, TaskSpec


@dataclass(frozen=True)
class _State:
    room: int = 0
    has_key: bool = False
    done: bool = False
    steps: int = 0


class ToyEnvironment:
    name = "toy"
    supports_snapshot = True

    def __init__(
        self,
        max_length: int = 4,
        crash_every: int = 0,
        wall_text: int = 0,
        hang_every: int = 0,
        hang_s: float = 86_400.0,
    ) -> None:
        self.max_length = max_length
        self.crash_every = crash_every
        self.wall_text = wall_text
        self.hang_every = hang_every
        self.hang_s = hang_s
        self._length = 0
        self._key = 0
        self._crash = False
        self._hang = False
        self._state = _State()

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        rng = random.Random(seed)
        specs = []
        for _ in range(n):
            length = rng.randint(2, self.max_length)
            key = rng.randint(0, length - 1)
            fault = next(
                (
                    f"-{name}"
                    for name, every in (("crash", self.crash_every), ("hang", self.hang_every))
                    if every and len(specs) % every == every - 1
                ),
                "",
            )
            specs.append(TaskSpec(f"corridor-{length}-{key}{fault}", seed=rng.randrange(2**31)))
        return specs

    def reset(self, task: TaskSpec) -> Reset:
        parts = task.env_task.split("-")
        self._length, self._key = int(parts[1]), int(parts[2])
        self._crash = task.env_task.endswith("-crash")
        self._hang = task.env_task.endswith("-hang")
        self._state = _State()
        instruction = f"Take the key and open the door at the end of the corridor (room {self._length})."
        return Reset(self._describe(), instruction)

    def _describe(self) -> str:
        s = self._state
        here = f"You are in room {s.room} of {self._length}."
        if s.room == self._key and not s.has_key:
            here += " A key lies here."
        if s.room == self._length:
            here += " A locked door is here."
        here += " You carry a key." if s.has_key else ""
        if self.wall_text:
            words = " ".join(f"room{s.room}-line{i}" for i in range(self.wall_text // 8 + 1))
            here += " The walls read: " + words[: self.wall_text]
        return here

    def admissible_actions(self) -> list[str]:
        s = self._state
        if s.done:
            return []
        actions = []
        if s.room < self._length:
            actions.append("go east")
        if s.room > 0:
            actions.append("go west")
        if s.room == self._key and not s.has_key:
            actions.append("take key")
        if s.room == self._length and s.has_key:
            actions.append("open door")
        return actions

    def step(self, action: str) -> StepOutcome:
        s = self._state
        if self._crash and s.steps >= 1:
            raise EnvironmentFailure("toy environment crashed (task asked for it)")
        if self._hang and s.steps >= 1:
            time.sleep(self.hang_s)
        if action not in self.admissible_actions():
            self._state = _State(s.room, s.has_key, s.done, s.steps + 1)
            return StepOutcome("That is not something you can do here.", 0.0, False, None)
        room, has_key, done = s.room, s.has_key, False
        if action == "go east":
            room += 1
        elif action == "go west":
            room -= 1
        elif action == "take key":
            has_key = True
        elif action == "open door":
            done = True
        self._state = _State(room, has_key, done, s.steps + 1)
        if done:
            return StepOutcome("The door opens. You win!", 1.0, True, True)
        return StepOutcome(self._describe(), 0.0, False, None)

    def walkthrough(self) -> list[str] | None:
        s = self._state
        plan: list[str] = []
        room = s.room
        if not s.has_key:
            plan += ["go east" if self._key > room else "go west"] * abs(self._key - room)
            plan.append("take key")
            room = self._key
        plan += ["go east"] * (self._length - room)
        return plan + ["open door"]

    def snapshot(self) -> _State:
        return self._state

    def restore(self, state: _State) -> None:
        self._state = state

    def close(self) -> None:
        pass
