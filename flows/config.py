"""A run config loaded from YAML plus command-line overrides (the environment's run defaults under
both), and checked against this machine before anything is written. The config itself is
run_config.py's; its names, and code_version's, are imported from here too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trajforge.flows.code_version import code_version as code_version
from trajforge.flows.code_version import git_version as git_version
from trajforge.flows.run_config import BudgetConfig as BudgetConfig
from trajforge.flows.run_config import EnvSpec as EnvSpec
from trajforge.flows.run_config import MCTSConfig as MCTSConfig
from trajforge.flows.run_config import ModelConfig as ModelConfig
from trajforge.flows.run_config import RunConfig
from trajforge.schemas.errors import ConfigError


def _with_environment_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A run of one environment takes that environment's `run_defaults` (e.g. MiniWoB: all its
    default tasks, short episodes, deeper MCTS rollouts) for every field the user left unset."""
    envs = data.get("envs", ["textworld"])
    envs = [envs] if isinstance(envs, str) else envs
    if not isinstance(envs, list) or len(envs) != 1:
        return data
    name = envs[0]["name"] if isinstance(envs[0], dict) and "name" in envs[0] else envs[0]
    if not isinstance(name, str):
        return data
    from trajforge.environments import registry

    defaults = getattr(registry.environment_class(name), "run_defaults", None) or {}
    return _merged(defaults, data)


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, nested mappings merged key by key."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if isinstance(err.get("ctx", {}).get("error"), ConfigError):  # a validator's own line
        return str(err["ctx"]["error"])
    field = ".".join(str(p) for p in err["loc"]) or "config"
    value = err.get("input")
    if field == "model.api_key_env":  # a key pasted where its variable's name belongs is not echoed
        return f"{field}: must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key"
    if err["type"] == "extra_forbidden":
        known = ", ".join(sorted(RunConfig.model_fields))
        return f"{field}: unknown field; remove it (known fields: {known})"
    return f"{field}: {value!r} is invalid: {err['msg']}; fix the '{field}' field or its flag"


def load_config(path: Path | None = None, **overrides: Any) -> RunConfig:
    """YAML file (optional) then overrides (flags); None overrides are ignored."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc.strerror}; pass an existing file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config: {path} is not valid YAML ({exc}); fix the file") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config: {path} must hold a mapping of fields, not {type(loaded).__name__}")
        data = loaded or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    data = _with_environment_defaults(data)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    from trajforge.environments import registry

    for env in config.envs:
        registry.environment_class(env.name)
    return config


def check_runnable(config: RunConfig) -> None:
    """What this machine must have for the run, checked before anything is written (by the CLI and
    by the flow): each environment built with its options (missing programs named), the local
    model directories, the API key's variable. The config's own rules are its validators."""
    from trajforge.environments import goals, registry
    from trajforge.inference.specs import parse_spec
    from trajforge.synthesizers.policies import BUILTIN

    for env in config.envs:
        try:
            made = registry.make(env.name, **env.options)
        except TypeError as exc:
            raise ConfigError(f"envs.{env.name}.options: {exc}; see the README's environment table") from None
        speaks_goals = goals.supports_goals(made)
        made.close()
        if config.synthesis and not speaks_goals:
            raise ConfigError(
                f"synthesis: {env.name} does not speak the goal contract, so its tasks cannot be "
                "synthesized; remove the synthesis section or that environment"
            )
    if config.synthesis and config.synthesis.from_lake:
        from trajforge.flows.synthesized import lake_tasks

        lake_tasks(config)  # refuses an environment the lake has no synthesized tasks of
    if config.synthesis and config.synthesis.decontaminate:
        from trajforge.synthesizers.tasks import load_eval_set

        load_eval_set(config.synthesis.decontaminate)
    for spec in config.policies:
        parse_spec(spec, "policies", BUILTIN).check_present("policies")
    if config.judge:
        parse_spec(config.judge, "judge").check_present("judge")
    key_env = config.model.api_key_env
    if key_env and not os.environ.get(key_env):
        raise ConfigError(
            f"model.api_key_env: the environment variable {key_env} is not set; export it with the "
            "server's key, or remove model.api_key_env"
        )
