"""AI feedback for MCTS, as in Agent Q: a critic model ranks the candidate actions of a node by
how well each advances the task, and the ranking becomes a value that MCTS mixes into the Q of
each action (`mcts.critic_weight`). Scores come from the likelihood of each candidate as the
critic's answer (no sampling), so the same node always gets the same values and a resumed run
finds them in the request cache."""

from __future__ import annotations

from collections.abc import Callable

from trajforge.inference.client import Backend
from trajforge.inference.context import ContextWindow
from trajforge.inference.scoring import score_candidates, softmax

SYSTEM = (
    "You critique the next move of an AI agent. Read the task, what the agent sees now and its "
    "candidate actions, then answer with the one action that best advances the task."
)
MAX_OBSERVATION = 2000  # characters of the observation shown: bounds the prompt


def action_messages(instruction: str, observation: str, actions: list[str]) -> list[dict[str, str]]:
    user = f"Task: {instruction}\n\nThe agent sees:\n{observation[:MAX_OBSERVATION]}" + _question(actions)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _question(actions: list[str]) -> str:
    listed = "\n".join(f"- {a}" for a in actions)
    return f"\n\nCandidate actions:\n{listed}\n\nWhich action best advances the task?"


class ActionCritic:
    """Values in [0, 1] for the candidate actions of a node: the critic's probability of
    picking each one, relative to its top pick (which gets 1)."""

    def __init__(
        self,
        client: Backend,
        model: str | None,
        on_close: Callable[[], None] | None = None,
        context_tokens: int | None = None,
    ) -> None:
        self.client, self.model, self._on_close = client, model, on_close
        self.window = ContextWindow(client, context_tokens)  # its prompts fit the critic's context

    def values(self, instruction: str, observation: str, actions: list[str]) -> dict[str, float]:
        """{} for fewer than two actions: a forced move needs no opinion."""
        if len(actions) < 2:
            return {}
        msgs = action_messages(instruction, observation, actions)
        # Fitted to the critic's context here, where the candidates are known: they are never cut.
        head = len(f"Task: {instruction}\n\nThe agent sees:\n")
        answer = {"role": "assistant", "content": "Best action: " + max(actions, key=len)}
        msgs = self.window.fit(msgs, 1, suffix=[answer], keep_head=head, keep_tail=len(_question(actions)))
        scores, _ = score_candidates(self.client, self.model, msgs, "Best action: ", actions, self.window)
        probs = softmax(scores)
        top = max(probs)
        return {a: round(p / top, 9) for a, p in zip(actions, probs, strict=True)}

    def close(self) -> None:
        self.client.close()
        if self._on_close:  # a vllm: spec's server
            self._on_close()


def make_critic(spec: str, **model_options: object) -> ActionCritic:
    """A critic for a model SPEC (the run's judge), behind the reliability layer; the options
    are the run's model options (cache_dir, timeout_s, prices)."""
    from trajforge.inference.specs import client_from_options

    client, on_close = client_from_options(spec, model_options)
    tokens = model_options.get("context_tokens")
    return ActionCritic(client, client.backend.model, on_close, tokens if isinstance(tokens, int) else None)
