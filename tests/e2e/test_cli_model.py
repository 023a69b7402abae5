"""A model policy through the command line, against the CPU model server on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import run_counts, sql_json
from tests.fake_http import FaultProxy, JSONHandler, LoopbackServer


@pytest.fixture(scope="module")
def model_url(tiny_server) -> str:
    """The session's tiny-model server (`serve-model --tiny` itself is run by test_cli_context
    and test_cli_secrets): its /v1 root and model name, as `URL#NAME`."""
    return f"{tiny_server.url}/v1#{tiny_server.name}"


def run_args(out: Path, model_url: str) -> list[str]:
    return [
        "run",
        "--out",
        str(out),
        "--env",
        "toy",
        "--tasks",
        "3",
        "--max-steps",
        "6",
        "--policy",
        f"openai:{model_url}",
    ]


def test_every_action_is_admissible_and_tokens_are_recorded(cli, model_url, tmp_path):
    out = tmp_path / "data"
    result = cli(*run_args(out, model_url))
    assert result.returncode == 0, result.stderr
    trajs = sql_json(cli, out, "SELECT tokens_in, tokens_out, model_calls, steps FROM trajectories")
    assert len(trajs) == 3
    assert all(t["tokens_in"] > 0 and t["tokens_out"] > 0 and t["model_calls"] > 0 for t in trajs)
    # The toy environment answers an inadmissible action with this line: it never appears.
    assert not any("not something you can do" in s["observation"] for t in trajs for s in t["steps"][1:])
    run = sql_json(cli, out, "SELECT tokens_in, tokens_out FROM runs")[0]
    assert run["tokens_in"] == sum(t["tokens_in"] for t in trajs)


def test_a_rerun_of_an_unfinished_run_answers_from_the_request_cache(cli, model_url, tmp_path):
    out = tmp_path / "data"
    first = cli(*run_args(out, model_url), "--dry-run")
    assert first.returncode == 0, first.stderr
    [manifest] = (out / "runs").glob("*/manifest.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "running"}))  # as if killed
    again = cli(*run_args(out, model_url))
    assert again.returncode == 0, again.stderr
    calls = sql_json(
        cli, out, "SELECT sum(model_calls) AS calls, sum(cached_calls) AS cached FROM trajectories"
    )[0]
    assert calls["calls"] > 0 and calls["cached"] == calls["calls"]
    counts = run_counts(cli, out)
    assert counts["model:cached_calls"] == calls["cached"]


def test_a_malformed_model_spec_is_one_line_and_exit_2(cli, tmp_path):
    result = cli("run", "--out", str(tmp_path / "d"), "--policy", "openai:localhost:1234")
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("error: policies:") and len(result.stderr.strip().splitlines()) == 1
    )


def test_the_judge_stage_scores_every_trajectory_and_critiques_failures(cli, model_url, tmp_path):
    out = tmp_path / "data"
    config = tmp_path / "judge.yaml"
    config.write_text(
        json.dumps(
            {
                "envs": ["toy"],
                "tasks": 3,
                "max_steps": 6,
                "judge": f"openai:{model_url}",
                "critique": True,
            }
        )
    )
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    trajs = sql_json(
        cli,
        out,
        "SELECT success, verifier_score, verifier_verdict, tokens_in, critique, num_steps FROM trajectories",
    )
    assert len(trajs) == 6  # oracle and random on 3 tasks
    assert all(0.0 <= t["verifier_score"] <= 1.0 and t["tokens_in"] > 0 for t in trajs)
    assert all(t["verifier_verdict"] == ("pass" if t["verifier_score"] >= 0.5 else "fail") for t in trajs)
    failures = [t for t in trajs if not t["success"]]
    assert failures, "the random policy with 6 steps fails some tasks"
    for t in failures:
        found = json.loads(t["critique"])
        assert 0 <= found["first_error_step"] < t["num_steps"] and 0 < found["confidence"] <= 1
    assert all(t["critique"] is None for t in trajs if t["success"])
    counts = run_counts(cli, out)
    judged = sum(counts.get(f"judge:{k}", 0) for k in ("tp", "fp", "fn", "tn"))
    assert judged == 6
    assert counts.get("judge:tp", 0) + counts.get("judge:fn", 0) == sum(t["success"] for t in trajs)


class OverloadedJudge(JSONHandler):
    """A judge server that is up (it answers the client's health probe, "ping") but asks every
    judgement to come back in an hour (503, Retry-After: 3600). The client does not wait that
    long: the first judgement fails with http_503 and opens the breaker for the rest."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_json(200, json.dumps({"data": [{"id": "tiny"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.path.endswith("/chat/completions"):
            self.send_json(404, b'{"error": {"message": "not found"}}')
        elif body["messages"][-1]["content"] == "ping":
            choice = {"index": 0, "message": {"content": "pong"}, "finish_reason": "length"}
            usage = {"prompt_tokens": 1, "completion_tokens": 1}
            self.send_json(200, json.dumps({"model": "tiny", "choices": [choice], "usage": usage}).encode())
        else:
            self.send_json(503, b'{"error": {"message": "overloaded"}}', {"Retry-After": "3600"})


def test_an_overloaded_judge_fails_judgements_with_reason_codes_and_the_run_commits(cli, tmp_path):
    server = LoopbackServer(OverloadedJudge)
    out = tmp_path / "data"
    try:
        args = ["run", "--out", str(out), "--env", "toy", "--tasks", "2", "--max-steps", "6"]
        config = tmp_path / "judge.yaml"
        config.write_text(json.dumps({"judge": f"openai:{server.origin}/v1#tiny", "critique": True}))
        result = cli(*args, "--config", str(config))
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    trajs = sql_json(cli, out, "SELECT trajectory_id, critique, verifier_verdict FROM trajectories")
    assert len(trajs) == 4 and all(t["critique"] is None for t in trajs)  # no error text in critique
    assert all(t["verifier_verdict"] in ("pass", "fail") for t in trajs)  # the environment's truth stays
    failures = sql_json(cli, out, "SELECT item_id, stage, reason FROM failures WHERE stage = 'judge'")
    assert len(failures) == 4 and {f["reason"] for f in failures} <= {"http_503", "circuit_open"}
    counts = run_counts(cli, out)
    assert counts["judge:failed"] == 4 and counts.get("failed:judge:http_503", 0) >= 1
    shown = cli("runs", "--out", str(out), "--format", "json")
    assert shown.returncode == 0 and "failed:judge:http_503" in shown.stdout, shown.stdout


def test_mcts_with_the_judge_as_critic_stores_its_values_on_nodes(cli, model_url, tmp_path):
    out = tmp_path / "data"
    config = tmp_path / "critic.yaml"
    settings = {
        "envs": ["toy"],
        "tasks": 2,
        "max_steps": 6,
        "search": "mcts",
        "policies": ["random"],
        "budget": {"env_steps": 40, "simulations": 15},
        "judge": f"openai:{model_url}",
        "mcts": {"critic_weight": 0.3},
    }
    config.write_text(json.dumps(settings))
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    nodes = sql_json(
        cli, out, "SELECT count(critic) AS valued, max(critic) AS top, min(critic) AS low FROM nodes"
    )[0]
    assert nodes["valued"] > 0 and nodes["top"] == 1.0 and 0 < nodes["low"] <= 1
    # The critic's tokens are the search's: the random policy itself asks no model.
    [row] = sql_json(cli, out, "SELECT sum(tokens_in) AS t, sum(model_calls) AS calls FROM trajectories")
    assert row["t"] > 0 and row["calls"] > 0

    config.write_text(json.dumps({**settings, "judge": None}))
    refused = cli("run", "--config", str(config), "--out", str(tmp_path / "none"))
    assert refused.returncode == 2 and "mcts.critic_weight" in refused.stderr
    assert not (tmp_path / "none").exists()


# 30% 503 (half with Retry-After), 10% hangs, 10% malformed JSON; the rest are forwarded.
FAULTS = {"503_retry_after": 0.15, "503": 0.15, "hang": 0.10, "malformed": 0.10}


def test_a_run_completes_against_a_faulty_model_server(cli, tiny_server, tmp_path):
    # A hang lasts an hour: only the client's 2 s timeout ends it, well inside the command's 600 s.
    proxy = FaultProxy(tiny_server.url, FAULTS, hang_s=3600)
    try:
        config = tmp_path / "faulty.yaml"
        config.write_text(
            json.dumps(
                {
                    "envs": ["toy"],
                    "tasks": 6,
                    "max_steps": 4,
                    "policies": [f"openai:{proxy.url}/v1#{tiny_server.name}"],
                    "model": {"timeout_s": 2.0},
                    "max_failed_share": 1.0,  # every item counts, data or failure (gate: test_cli_resume)
                }
            )
        )
        out = tmp_path / "data"
        runs = 0
        while True:  # a batch without trajectories is refused; the same command retries its items
            runs += 1
            # Each command ends within 600 s although a hang lasts an hour: timeouts cut them.
            result = cli("run", "--config", str(config), "--out", str(out), timeout=600)
            if result.returncode != 1 or runs == 6:
                break
            assert "no trajectories" in result.stderr and "run the same command again" in result.stderr
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert {"503", "503_retry_after", "hang", "malformed", "ok"} <= set(proxy.kinds)
    trajs = sql_json(cli, out, "SELECT trajectory_id FROM trajectories")
    failures = sql_json(cli, out, "SELECT item_id, reason, detail FROM failures")
    assert len(trajs) + len(failures) == 6  # every (task, policy) is either data or a recorded failure
    assert len({t["trajectory_id"] for t in trajs}) == len(trajs)
    # Reasons are codes a user can act on (the exception's class stays in the detail).
    assert {f["reason"] for f in failures} <= {"timeout", "http_503", "malformed", "connect", "circuit_open"}
    assert all(f["detail"] for f in failures)
