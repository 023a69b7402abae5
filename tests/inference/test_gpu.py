"""GPU-only: vLLM's offline engine and Beam's own vLLM RunInference handler on the tiny model.
Marked `gpu` and skipped on machines without vLLM and CUDA (all of this project's CI)."""

from __future__ import annotations

import importlib.util

import pytest


def _gpu_ready() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_ready(), reason="needs vLLM and a CUDA GPU")]


def test_vllm_offline_engine_generates_a_constrained_choice(tiny_model):
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    llm = LLM(model=str(tiny_model), max_model_len=512)
    params = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    [out] = llm.chat([{"role": "user", "content": "Did it work?"}], params)
    assert out.outputs[0].text in ("yes", "no")


def test_beam_vllm_chat_handler_runs_the_judge_prompts(tiny_model):
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.vllm_inference import OpenAIChatMessage, VLLMChatModelHandler
    from apache_beam.testing.util import assert_that

    from trajforge.validators.judge import judge_messages

    trajectory = {"instruction": "open the door", "steps": [], "final_observation": "You win!"}
    chat = [OpenAIChatMessage(role=m["role"], content=m["content"]) for m in judge_messages(trajectory)]
    handler = VLLMChatModelHandler(str(tiny_model), vllm_server_kwargs={"max-model-len": "512"})
    with beam.Pipeline() as p:
        results = p | beam.Create([chat]) | RunInference(handler)
        assert_that(results | beam.Map(lambda r: bool(r.inference.choices)), lambda got: got == [True])
