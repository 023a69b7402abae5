"""The run configuration, in the layer that runs it: one pydantic model, loaded from YAML plus
command-line overrides, with its cross-field rules as validators."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from dataclasses import asdict, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trajforge import __version__
from trajforge.schemas.errors import ConfigError
from trajforge.schemas.ids import canonical_json
from trajforge.schemas.kinds import SearchMethod

if TYPE_CHECKING:
    from trajforge.inference.specs import ClientOptions

# Settings that decide where and how fast a run executes, not what data it makes:
# they stay out of the fingerprint, so moving a run to another runner or folder keeps its id
# (and raising max_failed_share lets a refused batch commit as the same run).
EXECUTION_FIELDS = {
    "out",
    "catalog",
    "commit_every",
    "pipeline_options",
    "workers",
    "concurrency",
    "requests_in_flight",
    "deadline_margin_s",
    "max_failed_share",
}
EXECUTION_MODEL_FIELDS = {"api_key_env"}
# What code_version hashes when the checkout has uncommitted changes: the code, not notes or tests.
CODE_PATHS = (
    "trajforge",
    "schemas",
    "environments",
    "inference",
    "synthesizers",
    "validators",
    "pipelines",
    "store",
    "flows",
    "pyproject.toml",
)


class EnvSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetConfig(BaseModel):
    """Per task, the same for every search method, so their comparisons are fair."""

    model_config = ConfigDict(extra="forbid")
    env_steps: int = Field(400, ge=1, description="environment steps per task and policy")
    simulations: int = Field(10_000, ge=1, description="MCTS simulations per task")
    wall_s: float = Field(300.0, gt=0, description="wall time per task and policy")
    tokens: int | None = Field(
        None, ge=1, description="model tokens (in + out) per task and policy; none: no limit"
    )


class MCTSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expand_k: int = Field(32, ge=1, description="candidate actions per node")
    c_puct: float = Field(0.5, gt=0, description="exploration weight of PUCT")
    rollout_depth: int = Field(1, ge=0, description="steps of the leaf rollout (0: none)")
    branching: Literal["auto", "snapshot", "replay"] = "auto"
    pair_gap: float = Field(0.1, ge=0, description="least Q gap of a sibling preference pair")
    keep_terminal_paths: bool = Field(False, description="store every distinct terminal path")
    critic_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="weight of the judge's values of a node's actions in MCTS selection (needs judge)",
    )


class ModelConfig(BaseModel):
    """How model policies (openai:, hf:, vllm:) call their model."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(128, ge=1, le=32_768, description="always bounded: decoding can loop")
    timeout_s: float = Field(60.0, gt=0, description="per request")
    price_in_per_m: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    price_out_per_m: float = Field(0.0, ge=0, description="USD per million completion tokens")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable that holds the API key of openai: servers "
        "(default: OPENAI_API_KEY when it is set); the key itself never goes in a config",
    )
    revision: str | None = Field(
        None,
        min_length=1,
        description="the served model's version (openai:): changing it changes the run id and misses "
        "the request cache, as new weights do for hf:/vllm:",
    )
    context_tokens: int | None = Field(
        None,
        ge=64,
        description="the model's context window in tokens (prompt + completion); none: as the server "
        "reports it (vLLM's max_model_len)",
    )

    @field_validator("context_tokens")
    @classmethod
    def _room_for_a_prompt(cls, value: int | None, info: Any) -> int | None:
        max_tokens = info.data.get("max_tokens", 0)
        if value is not None and value < max_tokens + 64:
            raise ValueError(
                f"leaves no room for a prompt next to max_tokens={max_tokens}; raise it above "
                f"{max_tokens + 64} or lower model.max_tokens"
            )
        return value

    def client_options(self, cache_dir: str | Path | None = None) -> ClientOptions:
        """The options of this model's clients (the other fields, temperature, max_tokens, ...,
        are a policy's)."""
        from trajforge.inference.specs import ClientOptions

        names = [f.name for f in fields(ClientOptions) if f.name != "cache_dir"]
        return ClientOptions(cache_dir=cache_dir, **{name: getattr(self, name) for name in names})


class RunConfig(BaseModel):
    """Everything a run needs. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(Path("trajforge-data"), description="folder of the lake and run records")
    catalog: str | None = Field(
        None,
        description="the lake's catalog: sqlite (the default), sqlite:PATH, postgres://USER@HOST:PORT/DB "
        "or duckdb (older lakes); none: the one the lake in `out` has",
    )
    envs: list[EnvSpec] = Field(default_factory=lambda: [EnvSpec(name="textworld")], min_length=1)
    tasks: int = Field(10, ge=1, le=100_000, description="tasks per environment")
    seed: int = Field(0, ge=0)
    search: SearchMethod = "rollout"
    policies: list[str] = Field(default_factory=lambda: ["oracle", "random"], min_length=1)
    samples: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="best_of_n rollouts per task and policy (default: budget / max_steps)",
    )
    max_steps: int = Field(40, ge=1, le=10_000, description="steps per episode (MCTS: tree depth)")
    max_observation_chars: int = Field(
        20_000,
        ge=256,
        description="observations longer than this are cut (head and tail kept, a marker between) "
        "before they reach prompts, trajectories and exports",
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    mcts: MCTSConfig = Field(default_factory=MCTSConfig)
    max_trajectory_pairs: int = Field(4, ge=0, description="success/failure pairs per task")
    model: ModelConfig = Field(default_factory=ModelConfig)
    judge: str | None = Field(None, description="model SPEC of the verifier stage; none: the env's truth")
    critique: bool = Field(False, description="the judge also names the first wrong step of each failure")
    concurrency: int = Field(1, ge=1, le=1024, description="searches in flight per worker")
    requests_in_flight: int = Field(
        64, ge=1, le=4096, description="judge requests in flight per worker (the server's capacity)"
    )
    deadline_margin_s: float = Field(
        30.0,
        ge=0,
        description="a search that has not returned by budget.wall_s * 1.1 + this many seconds is "
        "abandoned and fails with reason 'timeout' (raise it if one model call can take longer)",
    )
    pipeline_options: list[str] = Field(
        default_factory=lambda: ["--runner=FnApiRunner", "--default_sdk_harness_log_level=WARNING"]
    )
    workers: int = Field(2, ge=1, le=256, description="processes for preparing environments")
    commit_every: int | None = Field(
        None,
        ge=1,
        description="commit every this many tasks, each step a snapshot, so a killed run resumes "
        "after its last step; none: the run commits once, at its end",
    )
    max_failed_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="largest share of failed (task, policy) items a batch may have and still commit; "
        "above it the gate refuses the batch and running the same command again retries the failed items",
    )

    @field_validator("envs", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("catalog")
    @classmethod
    def _known_catalog(cls, value: str | None) -> str | None:
        if value is not None:
            from trajforge.schemas.errors import LakeError
            from trajforge.store.catalogs import parse, redact

            try:
                found = parse(value, Path("."))
            except LakeError as exc:
                raise ValueError(str(exc).removeprefix(f"--catalog {value!r}: ")) from None
            if found.kind == "postgres" and redact(found.location) != found.location:
                raise ValueError(
                    "the URI holds a password, which would be stored with the run: "
                    "drop it and set PGPASSWORD or ~/.pgpass instead"
                )
        return value

    @field_validator("policies", mode="before")
    @classmethod
    def _one_policy(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("policies")
    @classmethod
    def _policy_specs(cls, value: list[str]) -> list[str]:
        from trajforge.inference.specs import parse_spec
        from trajforge.synthesizers.policies import BUILTIN

        for spec in value:
            parse_spec(spec, "policies", BUILTIN)
        return value

    @field_validator("judge")
    @classmethod
    def _judge_spec(cls, value: str | None) -> str | None:
        from trajforge.inference.specs import parse_spec

        if value is not None:
            parse_spec(value, "judge")  # a model: there is no judging without one
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        if self.critique and not self.judge:
            raise ConfigError("critique: needs a judge model; set 'judge' (or --judge SPEC) too")
        if self.mcts.critic_weight > 0 and not self.judge:
            raise ConfigError(
                "mcts.critic_weight: the critic is the judge model; set 'judge' (or --judge SPEC) too, "
                "or set mcts.critic_weight: 0"
            )
        if self.mcts.branching == "snapshot" and self.search == "mcts":
            from trajforge.environments import registry

            for env in self.envs:
                if not getattr(registry.environment_class(env.name), "supports_snapshot", False):
                    raise ConfigError(
                        f"mcts.branching: {env.name} has no snapshot/restore; use 'auto' or 'replay'"
                    )
        return self

    def fingerprint_json(self) -> str:
        exclude: dict[str, Any] = {f: True for f in EXECUTION_FIELDS} | {"model": EXECUTION_MODEL_FIELDS}
        return canonical_json(self.model_dump(mode="json", exclude=exclude))

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(self.fingerprint_json().encode()).hexdigest()[:16]

    def model_fingerprints(self) -> dict[str, str]:
        """The fingerprint of each model SPEC of the run (policies, judge) that has one."""
        from trajforge.inference.specs import model_fingerprint

        specs = [*self.policies, *([self.judge] if self.judge else [])]
        found = {spec: model_fingerprint(spec, self.model.revision) for spec in specs}
        return {spec: fp for spec, fp in sorted(found.items()) if fp}

    @property
    def run_id(self) -> str:
        """Same data settings, same models and same code: same run, so a rerun resumes instead
        of forking; new weights under the same name (or a new model.revision) are a new run."""
        base = f"{self.config_hash}:{code_version()}"
        fingerprints = self.model_fingerprints()
        if fingerprints:  # only with models: ids of runs without one stay as they were
            base += ":" + canonical_json(fingerprints)
        return hashlib.sha256(base.encode()).hexdigest()[:16]

    @property
    def sample_count(self) -> int:
        if self.search == "rollout":
            return 1
        return self.samples or max(1, self.budget.env_steps // self.max_steps)

    def model_options(self) -> dict[str, Any]:
        """Options of model policies; their request cache lives in the output folder, so a
        rerun of the same run answers completed calls from it."""
        client = self.model.client_options(cache_dir=str(self.out / "cache" / "requests"))
        return {**self.model.model_dump(), **asdict(client)}

    def search_settings(self) -> Any:
        """The search's settings, field by field by name: a field of budget or mcts that the
        search does not know fails here (pair mining's own fields stay with the pipeline)."""
        from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings

        m = self.mcts
        return SearchSettings(
            method=self.search,
            max_steps=self.max_steps,
            samples=self.sample_count,
            max_observation_chars=self.max_observation_chars,
            budget=Budget(**self.budget.model_dump()),
            mcts=MCTSSettings(
                **m.model_dump(exclude={"pair_gap", "keep_terminal_paths"}),
                critic=self.judge if m.critic_weight > 0 else None,
            ),
        )


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit when running from a checkout, plus a hash of the
    uncommitted changes to the code when there are any (`git_version`)."""
    version = git_version(Path(__file__).resolve().parent)
    return f"{__version__}+{version}" if version else __version__


def git_version(directory: Path, paths: tuple[str, ...] = CODE_PATHS) -> str:
    """HEAD's short sha; with uncommitted changes under `paths` (edits of tracked files, new
    files not ignored), `SHA.dirty-HASH`, HASH covering the diff and the new files' contents.
    "" outside a git checkout."""

    def git(*args: str, cwd: Path = directory) -> bytes:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return b""
        return done.stdout if done.returncode == 0 else b""

    sha = git("rev-parse", "--short=12", "HEAD").decode().strip()
    top = git("rev-parse", "--show-toplevel").decode().strip()
    if not sha or not top:
        return sha
    root = Path(top)
    present = [p for p in paths if (root / p).exists()]
    if not present:
        return sha
    diff = git("diff", "HEAD", "--binary", "--", *present, cwd=root)
    new_files = sorted(
        n
        for n in git("ls-files", "-z", "--others", "--exclude-standard", "--", *present, cwd=root).split(
            b"\0"
        )
        if n
    )
    if not diff and not new_files:
        return sha
    digest = hashlib.sha256(diff)
    for name in new_files:
        digest.update(name + b"\0")
        with contextlib.suppress(OSError):  # gone meanwhile, or unreadable: its name still counts
            digest.update(hashlib.sha256((root / name.decode()).read_bytes()).digest())
    return f"{sha}.dirty-{digest.hexdigest()[:8]}"


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
    from trajforge.environments import registry
    from trajforge.inference.specs import parse_spec
    from trajforge.synthesizers.policies import BUILTIN

    for env in config.envs:
        try:
            registry.make(env.name, **env.options).close()
        except TypeError as exc:
            raise ConfigError(f"envs.{env.name}.options: {exc}; see the README's environment table") from None
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
