"""The judge stage in Beam against `serve-model`'s CPU server on a tiny model: our handler,
and Beam's own vLLM chat handler speaking to the same server (only vLLM's launch, which needs
a GPU, is replaced)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest

from tests.fake_http import JSONHandler, LoopbackServer
from trajforge.pipelines.judging import Judge, ScoreQuestions, _VLLMScoring
from trajforge.schemas import ids
from trajforge.schemas.records import Step, Trajectory
from trajforge.validators.judge import judge_question


def trajectory(i: int, success: bool, steps: int) -> dict:
    return Trajectory(
        trajectory_id=f"t{i}",
        task_id="task",
        env="toy",
        instruction="take the key and open the door",
        search="rollout",
        policy="random",
        steps=[Step(index=s, observation=f"room {s}", action="go east") for s in range(steps)],
        num_steps=steps,
        total_reward=1.0 if success else 0.0,
        success=success,
    ).row()


ROWS = [trajectory(i, success=i % 2 == 0, steps=1 + i % 3) for i in range(6)]


@pytest.fixture(scope="module")
def judged(tiny_server, tmp_path_factory) -> dict[str, dict]:
    """The stage's output rows, by id (read back from a text sink: Beam outputs are not lists)."""
    out = tmp_path_factory.mktemp("judged") / "rows"
    spec = f"openai:{tiny_server.url}#{tiny_server.name}"
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        judged = (
            p
            | beam.Create(ROWS)
            | Judge(spec, {"cache_dir": None, "timeout_s": 30}, critique=True, concurrency=8)
        )
        _ = (
            judged["trajectories"]
            | beam.Map(json.dumps, default=str)
            | beam.io.WriteToText(str(out), shard_name_template="")
        )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(ROWS)
    return {r["trajectory_id"]: r for r in rows}


def judge_and_read(rows: list[dict], spec: str, tmp_path, **kwargs) -> tuple[list[dict], list[dict]]:
    """The stage's trajectories and failure rows (read back from text sinks)."""
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        judged = p | beam.Create(rows) | Judge(spec, {"cache_dir": None, "timeout_s": 2}, **kwargs)
        for name in ("trajectories", "failures"):
            _ = (
                judged[name]
                | f"json {name}" >> beam.Map(json.dumps, default=str)
                | f"write {name}" >> beam.io.WriteToText(str(tmp_path / name), shard_name_template="")
            )
    return tuple(  # type: ignore[return-value]
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("trajectories", "failures")
    )


def test_every_trajectory_comes_back_once_with_a_verdict_and_its_tokens(judged):
    assert set(judged) == {r["trajectory_id"] for r in ROWS}
    for row in judged.values():
        assert 0 <= row["verifier_score"] <= 1
        assert row["verifier_verdict"] == ("pass" if row["verifier_score"] >= 0.5 else "fail")
        assert row["tokens_in"] > 0


def test_failures_get_a_critique_naming_one_of_their_steps(judged):
    for row in judged.values():
        if row["success"]:
            assert row["critique"] is None
            continue
        found = json.loads(row["critique"])
        assert 0 <= found["first_error_step"] < row["num_steps"]
        assert set(found["step_scores"]) == {str(i) for i in range(row["num_steps"])}


def test_an_unreachable_judge_fails_each_judgement_not_the_run(tmp_path):
    rows, failures = judge_and_read(ROWS[:3], "openai:http://127.0.0.1:9/v1#gone", tmp_path)
    assert sorted(r["trajectory_id"] for r in rows) == [r["trajectory_id"] for r in ROWS[:3]]
    assert all(
        r["verifier_verdict"] is None and r["critique"] is None for r in rows
    )  # unjudged, not annotated
    assert sorted(f["item_id"] for f in failures) == sorted(
        ids.judgement_failure_id(r["trajectory_id"], "judge") for r in ROWS[:3]
    )
    assert {(f["stage"], f["task_id"]) for f in failures} == {("judge", "task")}
    assert {f["reason"] for f in failures} <= {"connect", "circuit_open"}, failures


class WrongModel(JSONHandler):
    """A model server that does not serve the judge's model: every POST gets 404."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_json(200, json.dumps({"data": [{"id": "another"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_json(404, b'{"error": {"message": "The model `gone` does not exist."}}')


def test_a_failed_judgement_is_a_failure_row_with_the_reason_code_not_a_critique(tmp_path):
    server = LoopbackServer(WrongModel)
    try:
        rows, failures = judge_and_read(ROWS[:2], f"openai:{server.origin}/v1#gone", tmp_path, critique=True)
    finally:
        server.stop()
    assert len(rows) == 2 and all(r["critique"] is None and r["verifier_score"] is None for r in rows)
    assert sorted((f["stage"], f["item_id"]) for f in failures) == sorted(
        [("judge", ids.judgement_failure_id(r["trajectory_id"], "judge")) for r in ROWS[:2]]
        # ROWS[1] failed by the environment's truth: it is still asked for its critique, which fails too
        + [("critique", ids.judgement_failure_id(ROWS[1]["trajectory_id"], "critique"))]
    )
    assert {f["reason"] for f in failures} == {"http_404"}
    assert all("does not exist" in f["detail"] and f["task_id"] == "task" for f in failures)


class FakeVLLMLaunch:
    """Stands in for Beam's _VLLMModelServer, which would start vLLM on a GPU: it names the
    port of a server that is already up (the CPU server, speaking vLLM's protocol)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get_server_port(self) -> int:
        return self.port

    def check_connectivity(self) -> None:
        pass


def test_beams_vllm_handler_gives_the_same_scores_as_our_handler(tiny_server, tmp_path):
    from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler

    port = int(tiny_server.url.rsplit(":", 1)[1].split("/")[0])

    class Handler(VLLMChatModelHandler):
        def load_model(self):  # type: ignore[no-untyped-def]
            return FakeVLLMLaunch(port)

    questions = [(judge_question(r), r["trajectory_id"]) for r in ROWS[:4]]
    results: dict[str, list] = {}
    for name, stage in {
        "beam": _VLLMScoring("unused", 4, handler=Handler(tiny_server.name, min_batch_size=4)),
        "ours": ScoreQuestions(f"openai:{tiny_server.url}#{tiny_server.name}", {"cache_dir": None}, 4),
    }.items():
        out = tmp_path / name
        with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
            _ = (
                p
                | f"{name} questions" >> beam.Create(questions)
                | stage
                | beam.Map(json.dumps, default=str)
                | beam.io.WriteToText(str(out), shard_name_template="")
            )
        rows = (json.loads(line) for line in out.read_text().splitlines())
        results[name] = sorted(rows, key=lambda r: r[1])
    assert [key for _, key in results["beam"]] == [key for _, key in results["ours"]]
    for (beam_scored, _), (our_scored, _) in zip(results["beam"], results["ours"], strict=True):
        assert "error" not in beam_scored, beam_scored
        assert beam_scored["scores"] == pytest.approx(our_scored["scores"], abs=1e-4)
        assert beam_scored["tokens_in"] == our_scored["tokens_in"]
