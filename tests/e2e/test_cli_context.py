"""Model runs through the command line against `serve-model --max-model-len 1024`: the tiny
model's tokenizer splits text finely (a TextWorld page of 746 bytes costs 461 tokens), so the
first prompt of an episode already exceeds the window; prompts are fitted and every item
becomes a trajectory."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import served_tiny_model, sql_json
from trajforge.environments import registry
from trajforge.environments.base import TaskSpec
from trajforge.inference.client import OpenAIHTTPBackend
from trajforge.synthesizers.llm_policy import LLMPolicy
from trajforge.synthesizers.policies import Context

WINDOW = 1024
MAX_TOKENS = 128  # model.max_tokens' default


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    with served_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", "--max-model-len", str(WINDOW)) as url:
        yield url


def first_prompt_tokens(url: str, env_name: str, env_task: str, seed: int) -> int:
    """Tokens of the policy's whole first prompt of a task, as the server counts them."""
    backend = OpenAIHTTPBackend(url, "tiny")
    env = registry.make(env_name)
    try:
        reset = env.reset(TaskSpec(env_task, seed))
        ctx = Context(env, reset.instruction, reset.observation, env.admissible_actions())
        return backend.tokenize(LLMPolicy(backend, "tiny", "spec").messages(ctx))
    finally:
        env.close()


def run_against(cli, out, url: str, env: str, tasks: int, max_steps: int) -> list[dict]:
    args = ["run", "--out", str(out), "--env", env, "--tasks", str(tasks), "--max-steps", str(max_steps)]
    result = cli(*args, "--policy", f"openai:{url}/v1#tiny", timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    failures = sql_json(cli, out, "SELECT reason, detail FROM failures")
    assert failures == [], failures
    return sql_json(
        cli,
        out,
        "SELECT t.env_task, t.seed, r.num_steps, r.model_calls, r.tokens_in FROM trajectories r "
        "JOIN tasks t USING (task_id) ORDER BY 1",
    )


def test_a_textworld_run_against_a_1024_token_model_commits_every_trajectory(cli, small_model, tmp_path):
    rows = run_against(cli, tmp_path / "data", small_model, "textworld", tasks=2, max_steps=8)
    assert len(rows) == 2
    assert all(r["num_steps"] >= 1 and r["model_calls"] >= r["num_steps"] for r in rows)
    # Each request stayed inside the window; sent whole, the first one alone would not have.
    assert all(r["tokens_in"] <= r["model_calls"] * (WINDOW - 1) for r in rows)
    first = rows[0]
    assert (
        first_prompt_tokens(small_model, "textworld", first["env_task"], first["seed"]) + MAX_TOKENS > WINDOW
    )


def test_a_web_run_against_a_1024_token_model_commits_every_trajectory(cli, small_model, tmp_path):
    rows = run_against(cli, tmp_path / "data", small_model, "webapp", tasks=2, max_steps=5)
    assert len(rows) == 2 and all(r["num_steps"] >= 1 for r in rows)
    first = rows[0]
    assert first_prompt_tokens(small_model, "webapp", first["env_task"], first["seed"]) + MAX_TOKENS > WINDOW


def test_the_configured_window_and_observation_cap_bound_prompts_and_rows(cli, small_model, tmp_path):
    """`model.context_tokens` smaller than the server's window is respected (the prompts the run
    sent were cut to it), and `max_observation_chars` caps the observations the lake holds."""
    config = tmp_path / "run.yaml"
    settings = {
        "envs": [{"name": "toy", "options": {"wall_text": 5000}}],  # rooms of ~3000 tokens each
        "tasks": 2,
        "max_steps": 4,
        "max_observation_chars": 1000,
        "model": {"context_tokens": 400, "max_tokens": 32},
    }
    config.write_text(json.dumps({**settings, "policies": [f"openai:{small_model}/v1#tiny"]}))
    out = tmp_path / "data"
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = sql_json(cli, out, "SELECT model_calls, tokens_in FROM trajectories")
    assert len(rows) == 2 and all(0 < r["tokens_in"] <= r["model_calls"] * (400 - 32) for r in rows)
    marker = len("[... 9999 characters cut ...]")
    [seen] = sql_json(
        cli,
        out,
        "SELECT max(length(observation)) AS longest, "
        "bool_and(observation LIKE '%characters cut ...]%') AS cut FROM steps",
    )
    [final] = sql_json(cli, out, "SELECT max(length(final_observation)) AS longest FROM trajectories")
    assert seen["cut"] and 1000 < seen["longest"] <= 1000 + marker and final["longest"] <= 1000 + marker
