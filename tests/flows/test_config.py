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
    import trajforge.flows.run_config as config_module  # where code_version is looked up

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


SERVER = "openai:http://127.0.0.1:9/v1#m"


@pytest.mark.parametrize(
    "given, line",
    [
        ({"critique": True}, "critique: needs a judge model; set 'judge' (or --judge SPEC) too"),
        (
            {"mcts": {"critic_weight": 0.3}},
            "mcts.critic_weight: the critic is the judge model; set 'judge' (or --judge SPEC) too, "
            "or set mcts.critic_weight: 0",
        ),
        (
            {"envs": ["webapp"], "search": "mcts", "mcts": {"branching": "snapshot"}},
            "mcts.branching: webapp has no snapshot/restore; use 'auto' or 'replay'",
        ),
        ({"judge": "random"}, "judge: 'random' is not a model spec; use openai:URL[#model], hf:PATH"),
        (
            {"judge": "openai:localhost:8000"},
            "judge: 'openai:localhost:8000' needs a server URL after 'openai:'",
        ),
        ({"policies": ["gpt4"]}, "policies: unknown policy 'gpt4'; use lexical, oracle, random, openai:"),
        ({"policies": ["hf:"]}, "policies: 'hf:' needs a local model directory after 'hf:'"),
    ],
)
def test_a_config_that_breaks_a_rule_is_one_line_naming_the_field(given, line):
    with pytest.raises(ConfigError) as exc:
        load_config(**given)
    assert str(exc.value).startswith(line) and "\n" not in str(exc.value)


@pytest.mark.parametrize("method", ["mcts", "best_first", "particle"])
def test_every_method_that_branches_by_snapshot_is_refused_at_config_check_without_snapshots(method):
    """Not per task at search time: the run does not start."""
    with pytest.raises(ConfigError) as exc:
        load_config(envs=["webapp"], search=method, mcts={"branching": "snapshot"})
    assert str(exc.value) == "mcts.branching: webapp has no snapshot/restore; use 'auto' or 'replay'"
    assert load_config(envs=["toy"], search=method, mcts={"branching": "snapshot"}).search == method
    assert load_config(envs=["webapp"], search=method, mcts={"branching": "replay"}).search == method


def test_a_config_built_without_the_cli_gets_the_same_rule_and_line():
    """A flow started from a Prefect deployment or a test validates the RunConfig itself."""
    from pydantic import ValidationError

    from trajforge.flows.config import RunConfig

    with pytest.raises(ValidationError, match="critique: needs a judge model; set 'judge'"):
        RunConfig(critique=True)
    assert RunConfig(critique=True, judge=SERVER, mcts={"critic_weight": 0.5}).judge == SERVER
    assert RunConfig(envs=["toy"], search="mcts", mcts={"branching": "snapshot"}).mcts.branching == "snapshot"
    assert (
        RunConfig(envs=["webapp"], mcts={"branching": "snapshot"}).search == "rollout"
    )  # no MCTS: no branching


def test_what_this_machine_lacks_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    from trajforge.flows.config import check_runnable

    monkeypatch.delenv("TRAJFORGE_UNSET_KEY", raising=False)
    cases = [
        (
            {"policies": [f"hf:{tmp_path / 'none'}"]},
            f"policies: 'hf:{tmp_path / 'none'}': no model directory",
        ),
        ({"judge": f"vllm:{tmp_path / 'none'}"}, f"judge: 'vllm:{tmp_path / 'none'}': no model directory"),
        ({"model": {"api_key_env": "TRAJFORGE_UNSET_KEY"}}, "model.api_key_env: the environment variable"),
        ({"envs": [{"name": "toy", "options": {"colour": 1}}]}, "envs.toy.options: "),
    ]
    for given, line in cases:
        config = load_config(out=tmp_path / "out", **given)
        with pytest.raises(ConfigError) as exc:
            check_runnable(config)
        assert str(exc.value).startswith(line), str(exc.value)
    assert not (tmp_path / "out").exists()


def test_the_model_config_produces_the_client_options_and_the_same_model_options(tmp_path):
    from trajforge.inference.specs import ClientOptions

    config = load_config(out=tmp_path, model={"timeout_s": 5, "revision": "r2", "temperature": 0.1})
    client = config.model.client_options(cache_dir="c")
    assert client == ClientOptions(cache_dir="c", timeout_s=5, revision="r2")
    options = config.model_options()
    assert options == {**config.model.model_dump(), "cache_dir": str(tmp_path / "cache" / "requests")}
    assert ClientOptions.split(options) == (
        config.model.client_options(str(tmp_path / "cache" / "requests")),
        {k: v for k, v in options.items() if k not in client.model_dump()},
    )


def test_the_model_section_keeps_its_keys_and_checks_the_client_fields_it_takes_from_the_client():
    from trajforge.flows.config import ModelConfig

    assert list(ModelConfig.model_fields) == [
        "temperature",
        "max_tokens",
        "timeout_s",
        "price_in_per_m",
        "price_out_per_m",
        "api_key_env",
        "revision",
        "context_tokens",
    ]
    with pytest.raises(ConfigError, match=r"^model\.timeout_s: 0 is invalid: .*greater than 0"):
        load_config(model={"timeout_s": 0})
    with pytest.raises(ConfigError, match=r"^model\.cache_dir: unknown field"):
        load_config(model={"cache_dir": "/tmp/x"})  # the run's output folder decides it, not a user
