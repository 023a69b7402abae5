"""A model trained on an SFT export sees the prompts it is given when it acts as the LLM policy:
each exported conversation, cut before step k's action, is the request the policy sent at step k
(the admissible actions block included), byte for byte."""

from __future__ import annotations

import pytest

from trajforge.inference.client import ChatRequest, Choice, Response, Usage
from trajforge.store.export import ExportSpec, export
from trajforge.store.lake import Lake

datasets = pytest.importorskip("datasets")


class Recording:
    """A backend that records each chat and answers with the best admissible action it was shown,
    with a thought that names it (no constant thought: the export keeps it)."""

    capabilities = frozenset()
    model = "recording"

    def __init__(self) -> None:
        self.requests: list[list[dict]] = []

    def chat(self, request: ChatRequest, *, timeout_s: float | None = None) -> Response:
        self.requests.append([dict(m) for m in request.messages])
        shown = request.messages[-1]["content"]
        action = next(a for a in ("open door", "take key", "go east") if f"- {a}\n" in shown + "\n")
        return Response(
            [Choice(f"Thought: I can {action}.\nAction: {action}", "stop")], Usage(1, 1), self.model
        )

    def close(self) -> None:
        pass


def test_exported_user_turns_are_the_policys_prompts(tmp_path, rollout_lake):
    from trajforge.environments.base import TaskSpec
    from trajforge.environments.toy import ToyEnvironment
    from trajforge.synthesizers.llm_policy import LLMPolicy

    backend = Recording()
    policy = LLMPolicy(backend, None, "recording")
    out = rollout_lake(tmp_path / "out", ToyEnvironment(), policy, [TaskSpec("corridor-3-1", 0, "")])
    with Lake.open(out, read_only=True) as lake:
        export(lake, tmp_path / "sft", ExportSpec())
    (row,) = datasets.load_dataset("parquet", data_dir=str(tmp_path / "sft" / "data"))["train"]
    messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    assert len(backend.requests) == 5 == sum(m["role"] == "assistant" for m in messages)
    for k, request in enumerate(backend.requests):
        assert messages[: 2 + 2 * k] == request  # system, then (user, assistant) turns, then user k
        assert "Admissible actions:\n- " in messages[1 + 2 * k]["content"]
    assert messages[-1]["content"] == "Thought: I can open door.\nAction: open door"
