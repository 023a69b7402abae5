"""The verifier and critique stages: a judge model scores questions about trajectories by the
likelihoods of candidate answers (`validators.judge`), through Beam RunInference.

The stage is the same pipeline whatever serves the judge; only the RunInference handler
differs (`ScoreQuestions`):
- `vllm:PATH` on GPU hosts: Beam's own `VLLMChatModelHandler`, which starts one vLLM server
  per machine and shares it between the worker processes; each candidate answer is one chat
  request asking for its prompt's log-probabilities;
- `openai:URL#model` (a vLLM server elsewhere, `trajforge serve-model` on CPU) and `hf:PATH`:
  our `ScoringHandler`, through the reliability layer (timeouts, retries, request cache), a
  batch's requests in flight together.
A question whose requests fail gets its error: the trajectory goes on unjudged (with the
environment's verdict) and the failed judgement is a failure row (stage `judge` or `critique`,
its reason code); it never fails the run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from trajforge.inference.client import Response
from trajforge.inference.context import ContextWindow
from trajforge.inference.scoring import (
    Question,
    Scored,
    as_scored,
    candidate_requests,
    score_many,
    scored_from_responses,
)
from trajforge.validators import judge

# What a candidate's chat request asks of vLLM: go on from the candidate (no new assistant
# turn), generate one token, and return the prompt's own log-probabilities.
VLLM_SCORING_ARGS = {
    "max_tokens": 1,
    "temperature": 0.0,
    "extra_body": {"prompt_logprobs": 0, "continue_final_message": True, "add_generation_prompt": False},
}


class ScoringHandler(ModelHandler):
    """(Question, payload) batches -> (Scored, payload), over any model SPEC but vllm: (see above).
    All of a batch's requests are in flight together, `concurrency` at a time, so a model
    server always has work; batches are several times that, so the pause between two batches
    is short next to each batch."""

    def __init__(self, spec: str, options: dict[str, Any], concurrency: int = 64) -> None:
        self.spec, self.options, self.concurrency = spec, options, concurrency

    def load_model(self) -> Any:
        from trajforge.inference.specs import client_from_options

        client, _ = client_from_options(self.spec, self.options)
        return client

    def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> list[tuple[Scored, Any]]:
        questions, payloads = zip(*batch, strict=True) if batch else ((), ())
        window = ContextWindow(model, self.options.get("context_tokens"))
        results = score_many(
            model, model.backend.model, questions, concurrency=self.concurrency, window=window
        )
        return [(as_scored(result), payload) for result, payload in zip(results, payloads, strict=True)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 8 * self.concurrency, "max_batch_size": 8 * self.concurrency}


class ScoreQuestions(beam.PTransform):
    """PCollection[(Question, payload)] -> PCollection[(Scored, payload)]: the payload (say, the
    trajectory asked about) travels with its question."""

    def __init__(self, spec: str, options: dict[str, Any], concurrency: int = 64) -> None:
        super().__init__()
        self.spec, self.options, self.concurrency = spec, options, concurrency

    def expand(self, questions: beam.PCollection) -> beam.PCollection:
        if self.spec.startswith("vllm:"):
            return questions | "vLLM" >> _VLLMScoring(self.spec.partition(":")[2], self.concurrency)
        return questions | "Score" >> RunInference(ScoringHandler(self.spec, self.options, self.concurrency))


class _VLLMScoring(beam.PTransform):
    """Beam's VLLMChatModelHandler: one request per candidate, regrouped per question (by a
    hash of its content) and joined back to the payloads. A batch that fails gives each of its
    questions the error."""

    def __init__(self, model_path: str, concurrency: int, handler: ModelHandler | None = None) -> None:
        super().__init__()
        self.model_path, self.concurrency, self.handler = model_path, concurrency, handler

    def expand(self, questions: beam.PCollection) -> beam.PCollection:
        handler = self.handler or vllm_chat_handler(self.model_path, self.concurrency)
        keyed = questions | "Key" >> beam.MapTuple(lambda q, payload: (_key(q), (q, payload)))
        payloads = keyed | "Payloads" >> beam.MapTuple(lambda key, qp: (key, qp[1]))
        requests = (
            keyed
            | "Questions" >> beam.MapTuple(lambda key, qp: (key, qp[0]))
            | "Once each" >> beam.GroupByKey()  # a question asked twice is scored once
            | "Candidates" >> beam.FlatMapTuple(lambda key, qs: _candidate_chats((key, next(iter(qs)))))
        )
        answers, dead = (
            requests
            | "Ask"
            >> RunInference(
                KeyedModelHandler(handler), inference_args=VLLM_SCORING_ARGS
            ).with_exception_handling()
        )
        ok = answers | "Answers" >> beam.MapTuple(lambda key, result: (key[0], (key[1], _response(result))))
        failed = dead.failed_inferences | "Failures" >> beam.FlatMap(_failed_batch)
        scores = (
            (ok, failed)
            | "All answers" >> beam.Flatten()
            | "By question" >> beam.GroupByKey()
            | "Scores" >> beam.MapTuple(_question_scores)
        )
        return (
            {"scores": scores, "payloads": payloads}
            | "Join" >> beam.CoGroupByKey()
            | "Back" >> beam.FlatMapTuple(lambda _, j: [(j["scores"][0], p) for p in j["payloads"]])
        )


def vllm_chat_handler(model_path: str, concurrency: int) -> ModelHandler:
    from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler

    # The handler sends a whole batch at once: a batch is what is in flight.
    return VLLMChatModelHandler(model_path, min_batch_size=concurrency, max_batch_size=concurrency)


def _key(question: Question) -> str:
    return hashlib.sha256(json.dumps(question, sort_keys=True).encode()).hexdigest()


def _candidate_chats(item: tuple[Any, Question]) -> list[tuple[tuple[Any, int], list[Any]]]:
    from apache_beam.ml.inference.vllm_inference import OpenAIChatMessage

    key, question = item
    out = []
    for i, request in enumerate(candidate_requests(None, question)):
        chat = [OpenAIChatMessage(role=m["role"], content=m["content"]) for m in request.messages]
        out.append(((key, i), chat))
    return out


def _response(result: Any) -> Response | Scored:
    """A ChatCompletion of the openai client as our Response (vLLM's prompt_logprobs ride
    along as an extra field); the parse error (as a Scored error) if it is not one."""
    from trajforge.inference.client import InferenceError, parse_response

    try:
        return parse_response(result.inference.model_dump(), chat=True)
    except InferenceError as exc:
        return as_scored(exc)


def _failed_batch(failed: tuple[list, Exception]) -> list[tuple[Any, tuple[int, Scored]]]:
    batch, exc = failed
    return [(key[0], (key[1], as_scored(exc))) for key, _ in batch]


def _question_scores(key: Any, answers: Any) -> tuple[Any, Scored]:
    by_index = dict(answers)  # a retried bundle may repeat an answer: the same one
    responses = [by_index[i] for i in sorted(by_index)]
    error = next((r for r in responses if isinstance(r, dict)), None)
    if error is not None:
        return key, error
    return key, scored_from_responses(responses)


class Judge(beam.PTransform):
    """Trajectories -> {"trajectories": the same trajectories with the judge's verdicts (and,
    with `critique`, the first wrong step of each failure), "failures": a Failure row per
    judgement that failed (stage `judge` or `critique`)}."""

    def __init__(self, spec: str, options: dict[str, Any], critique: bool = False, concurrency: int = 64):
        super().__init__()
        self.spec, self.options, self.critique, self.concurrency = spec, options, critique, concurrency

    def _scored(self, stage: str, trajectories: beam.PCollection, ask: Any, apply: Any) -> Any:
        return (
            trajectories
            | f"{stage}: questions" >> beam.Map(lambda t: (ask(t), t))
            | f"{stage}: score" >> ScoreQuestions(self.spec, self.options, self.concurrency)
            | f"{stage}: apply"
            >> beam.FlatMap(_applied, apply, stage).with_outputs(FAILURES, main="trajectories")
        )

    def expand(self, trajectories: beam.PCollection) -> dict[str, beam.PCollection]:
        judged = self._scored("judge", trajectories, judge.judge_question, judge.with_verdict)
        if not self.critique:
            return {"trajectories": judged.trajectories, "failures": judged[FAILURES]}
        failed, rest = judged.trajectories | "Needs critique" >> beam.Partition(
            lambda t, _: 0 if judge.needs_critique(t) else 1, 2
        )
        critiqued = self._scored("critique", failed, judge.critique_question, judge.with_critique)
        return {
            "trajectories": (critiqued.trajectories, rest) | "Judged" >> beam.Flatten(),
            "failures": (judged[FAILURES], critiqued[FAILURES]) | "Failed judgements" >> beam.Flatten(),
        }


FAILURES = "failures"


def _applied(item: tuple[Scored, dict[str, Any]], apply: Any, stage: str) -> Any:
    """The trajectory as the scores make it, and the failure row of a judgement that failed."""
    scored, trajectory = item
    yield apply(trajectory, scored)
    failure = judge.failed_judgement(trajectory, scored, stage)
    if failure is not None:
        yield beam.pvalue.TaggedOutput(FAILURES, failure.row())
