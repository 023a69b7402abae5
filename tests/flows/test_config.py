"""The run configuration: environment defaults, overrides, and one-line errors."""

from __future__ import annotations

import pytest

from trajforge.flows.config import load_config
from trajforge.schemas.errors import ConfigError


def test_a_miniwob_run_takes_its_environment_defaults():
    cfg = load_config(envs=["miniwob"], search="mcts")
    assert (cfg.tasks, cfg.max_steps, cfg.mcts.rollout_depth, cfg.mcts.c_puct) == (18, 6, 3, 1.0)
    assert cfg.policies == ["random"]
    assert cfg.mcts.expand_k == 32  # what the environment does not set keeps the run's default


def test_what_the_user_sets_wins_over_environment_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("envs: [{name: miniwob, options: {tasks: [click-test]}}]\nmcts: {c_puct: 2.0}\n")
    cfg = load_config(config, tasks=3)
    assert (cfg.tasks, cfg.mcts.c_puct, cfg.mcts.rollout_depth, cfg.max_steps) == (3, 2.0, 3, 6)


def test_several_environments_or_one_without_defaults_keep_the_run_defaults():
    assert load_config(envs=["miniwob", "toy"]).tasks == 10
    assert load_config(envs=["toy"]).max_steps == 40
    assert load_config().mcts.rollout_depth == 1


def test_an_unknown_environment_is_one_config_error():
    with pytest.raises(ConfigError, match="env: unknown environment 'minwob'"):
        load_config(envs=["minwob"])


def test_a_context_window_with_no_room_for_a_prompt_is_one_config_error():
    with pytest.raises(ConfigError) as exc:
        load_config(model={"context_tokens": 150, "max_tokens": 128})
    message = str(exc.value)
    assert message.startswith("model.context_tokens: 150 is invalid") and "max_tokens=128" in message
    assert "\n" not in message
    assert load_config(model={"context_tokens": 1024}).model.context_tokens == 1024


def test_the_same_config_keeps_its_run_id_across_versions(monkeypatch):
    """Pinned before the config moved to flows/: a change here would fork every run on resume."""
    import trajforge.flows.config as config_module

    monkeypatch.setattr(config_module, "code_version", lambda: "0.1.0+pinned")
    default = config_module.RunConfig()
    assert (default.config_hash, default.run_id) == ("db6deda74e026b30", "8d5175b3b920a89d")
    server = "openai:http://127.0.0.1:9/v1"
    full = config_module.RunConfig(
        search="mcts",
        policies=[f"{server}#m", "random"],
        judge=f"{server}#j",
        critique=True,
        model={"revision": "r1", "api_key_env": "K"},
        mcts={"critic_weight": 0.5},
    )
    assert (full.config_hash, full.run_id) == ("98ecc9644d784607", "d538ef815d39dd60")
