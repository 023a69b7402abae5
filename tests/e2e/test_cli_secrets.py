"""A model server that needs an API key: the run sends it (from the environment variable the
config names), and the key is nowhere in what the run leaves behind."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.helpers import served_tiny_model, sql_json

CANARY = "sk-canary-7f3a9c2e41d0b8"  # a key that must never be written anywhere


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """`trajforge serve-model --api-key KEY` (as `vllm serve --api-key`): 401 without the key."""
    env = {**os.environ, "TRAJFORGE_SERVE_API_KEY": CANARY}
    with served_tiny_model(tmp_path_factory.mktemp("tiny-keyed") / "tiny", env=env) as url:
        yield url


def status_without_key(url: str, key: str | None) -> int:
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(f"{url}/v1/chat/completions", body.encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_a_run_sends_the_key_from_the_environment_and_writes_it_nowhere(
    cli, keyed_server, tmp_path, tmp_path_factory
):
    assert status_without_key(keyed_server, None) == 401
    assert status_without_key(keyed_server, "sk-wrong") == 401
    assert status_without_key(keyed_server, CANARY) == 200

    spec = f"openai:{keyed_server}/v1#tiny"
    config = tmp_path / "keyed.yaml"
    config.write_text(
        json.dumps(
            {
                "envs": ["toy"],
                "tasks": 2,
                "max_steps": 4,
                "policies": [spec],
                "judge": spec,
                "model": {"api_key_env": "TRAJFORGE_TEST_KEY"},
            }
        )
    )
    out = tmp_path / "data"
    result = cli("run", "--config", str(config), "--out", str(out), TRAJFORGE_TEST_KEY=CANARY)
    assert result.returncode == 0, result.stderr
    # The key was sent: the policy's and the judge's requests were answered.
    trajs = sql_json(cli, out, "SELECT tokens_in, verifier_score FROM trajectories")
    assert len(trajs) == 2 and all(t["tokens_in"] > 0 and t["verifier_score"] is not None for t in trajs)
    assert sql_json(cli, out, "SELECT count(*) AS n FROM failures")[0]["n"] == 0
    [run] = sql_json(cli, out, "SELECT config_json FROM runs")
    assert "TRAJFORGE_TEST_KEY" in run["config_json"]  # its name, not its value

    secret = CANARY.encode()
    assert secret not in (result.stdout + result.stderr).encode()
    assert files_holding(out, secret) == []  # lake, catalog, manifests, request cache, reports
    prefect_homes = list(tmp_path_factory.getbasetemp().glob("prefect-home*"))
    assert prefect_homes, "the session's Prefect server keeps its database in a tmp PREFECT_HOME"
    for home in prefect_homes:  # flow-run parameters, task runs, logs
        assert files_holding(home, secret) == []


def test_a_key_variable_that_is_not_set_is_one_line_and_exit_2(cli, keyed_server, tmp_path):
    config = tmp_path / "unset.yaml"
    settings = {"envs": ["toy"], "policies": [f"openai:{keyed_server}/v1#tiny"]}
    config.write_text(json.dumps({**settings, "model": {"api_key_env": "TRAJFORGE_UNSET_KEY"}}))
    out = tmp_path / "data"
    result = cli("run", "--config", str(config), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip().splitlines() == [
        "error: model.api_key_env: the environment variable TRAJFORGE_UNSET_KEY is not set; export it "
        "with the server's key, or remove model.api_key_env"
    ]
    config.write_text(json.dumps({**settings, "model": {"api_key_env": CANARY}}))  # the key pasted in
    pasted = cli("run", "--config", str(config), "--out", str(out))
    assert pasted.returncode == 2 and "model.api_key_env" in pasted.stderr
    assert CANARY not in pasted.stderr + pasted.stdout
