"""The run configuration, in the layer that runs it: one pydantic model (with its parts), whose
cross-field rules are validators, so a flow started from a deployment or a test gets the same
one-line errors as the command line. Loading it from YAML and flags is config.py's."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from trajforge.flows.code_version import code_version
from trajforge.inference.specs import ClientOptions, ClientSettings
from trajforge.schemas.errors import ConfigError
from trajforge.schemas.ids import canonical_json
from trajforge.schemas.kinds import SearchMethod
from trajforge.synthesizers.tasks import SOURCES, SynthesisSettings

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


class PolicySettings(BaseModel):
    """How a model policy samples (the client's settings are ClientSettings')."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(128, ge=1, le=32_768, description="always bounded: decoding can loop")


# The bases' order keeps the fields' order of before (temperature, max_tokens, the client's,
# context_tokens), so a run's stored config_json reads as it did.
class ModelConfig(ClientSettings, PolicySettings):
    """How model policies (openai:, hf:, vllm:) call their model."""

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
        return ClientOptions(cache_dir=cache_dir, **self.model_dump(include=set(ClientSettings.model_fields)))


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class SynthesisConfig(SynthesisSettings):
    """`synthesis:` of a run: its tasks are synthesized (synthesizers.tasks, with these settings)
    and verified before the search, instead of the environment's own; or, with `from_lake`, the
    synthesized tasks already in the lake (up to `tasks` per environment), with none made."""

    from_lake: bool = False
    policy: str = "random"  # policy SPEC of the solve-rate rollouts (max_steps steps each)
    decontaminate: Path | None = None  # evaluation set whose tasks must not be made

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ConfigError(
                f"synthesis.sources: {unknown[0]!r} is unknown; use some of {', '.join(SOURCES)}"
            )
        for name in ("instances", "attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synthesis.{name}: must be at least 1; raise it")

    def settings(self) -> SynthesisSettings:
        return SynthesisSettings(
            **{name: getattr(self, name) for name in SynthesisSettings.__dataclass_fields__}
        )


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
    synthesis: SynthesisConfig | None = Field(
        None,
        description="synthesize the run's tasks (or take the lake's synthesized ones); none: the env's own",
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
        if self.mcts.branching == "snapshot" and self.branches():
            from trajforge.environments import registry

            for env in self.envs:
                if not getattr(registry.environment_class(env.name), "supports_snapshot", False):
                    raise ConfigError(
                        f"mcts.branching: {env.name} has no snapshot/restore; use 'auto' or 'replay'"
                    )
        return self

    def branches(self) -> bool:
        """Whether the search steps from action prefixes, so mcts.branching applies to it."""
        from trajforge.synthesizers.search.settings import BRANCHING_METHODS

        return self.search in BRANCHING_METHODS

    def fingerprint_json(self) -> str:
        exclude: dict[str, Any] = {f: True for f in EXECUTION_FIELDS} | {"model": EXECUTION_MODEL_FIELDS}
        data = self.model_dump(mode="json", exclude=exclude)
        if data["synthesis"] is None:  # runs without synthesis keep the ids they had
            del data["synthesis"]
        elif self.synthesis and self.synthesis.decontaminate:  # its content, not its path, is the data
            with contextlib.suppress(OSError):
                data["synthesis"]["decontaminate"] = hashlib.sha256(
                    self.synthesis.decontaminate.read_bytes()
                ).hexdigest()
        return canonical_json(data)

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
        return {**self.model.model_dump(), **client.model_dump()}

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
