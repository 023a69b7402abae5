"""The synthesis pipeline: describe tasks, search every (task, policy) with rollouts,
best-of-n or MCTS, verify, mine preference pairs, and write Parquet to the run's staging
folder. Thin DoFns around synthesizers/ and validators/.

Elements carry only names, seeds and options, never local paths or live objects, so the
same pipeline runs on a distributed runner by pipeline options alone.

Concurrency: each worker keeps `concurrency` searches in flight (a sliding window over its
bundle: a finished search's thread takes the next item at once; one environment instance and
one policy per thread), so that when the policy is a model server, requests from different
searches are in flight together. Beam's own workers multiply this (`--direct_num_workers`, or
the runner's worker count).

Deadlines: a search may run its wall budget plus a margin (`search_deadline_s`). One that has
not returned by then (a wedged environment step, a local model ignoring its timeout) fails
with reason `timeout`; its thread is abandoned, never joined (`pipelines.deadlines`), and its
environment is closed in the background, never reused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

# Beam warns at import that Google Cloud clients are absent; they are not needed here.
logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("apitools not found"))

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.timestamp import MIN_TIMESTAMP  # noqa: E402
from apache_beam.utils.windowed_value import WindowedValue  # noqa: E402

from trajforge.environments import registry  # noqa: E402
from trajforge.environments.base import Environment, TaskSpec  # noqa: E402
from trajforge.inference.specs import model_fingerprint  # noqa: E402
from trajforge.pipelines.deadlines import DeadlineExceeded, DeadlinePool  # noqa: E402
from trajforge.pipelines.judging import Judge  # noqa: E402
from trajforge.schemas import arrow, ids  # noqa: E402
from trajforge.schemas.records import Artifact, Failure, Task, Trajectory, TreeNode  # noqa: E402
from trajforge.synthesizers.pairs import sibling_pairs, trajectory_pairs  # noqa: E402
from trajforge.synthesizers.policies import make_policy  # noqa: E402
from trajforge.synthesizers.search import Path_, SearchResult, SearchSettings, search, search_key, search_seed  # noqa: E402
from trajforge.validators.verifier import environment_verdict  # noqa: E402

FAILURES, NODES, PAIRS, ARTIFACTS = "failures", "nodes", "pairs", "artifacts"
STAGED_TABLES = ("tasks", "trajectories", "failures", "pairs", "nodes", "artifacts")
# A search's deadline: its wall budget, 10% more, and a margin for the step it was in when the
# budget ran out (the search checks the clock between steps), `deadline_margin_s` of the run.
DEADLINE_FACTOR = 1.1
DEADLINE_MARGIN_S = 30.0


def search_deadline_s(wall_s: float, margin_s: float = DEADLINE_MARGIN_S) -> float:
    return wall_s * DEADLINE_FACTOR + margin_s


class _EnvDoFn(beam.DoFn):
    """A pool of live environments per name, for the life of the worker."""

    def __init__(self, env_options: dict[str, dict[str, Any]], run_id: str) -> None:
        self.env_options = env_options
        self.run_id = run_id

    def setup(self) -> None:
        self._free: dict[str, list[Environment]] = {}  # "name@thread" -> idle environments
        self._busy: dict[threading.Thread, Environment] = {}  # the environment each thread is using
        self._lock = threading.Lock()

    def abandoned(self) -> bool:
        """Whether the current thread was given up on (Search: past its deadline)."""
        return False

    @contextlib.contextmanager
    def env(self, name: str) -> Iterator[Environment]:
        """An environment of this thread (browsers are bound to the thread that made them)."""
        key = f"{name}@{threading.get_ident()}"
        with self._lock:
            free = self._free.setdefault(key, [])
            env = free.pop() if free else None
        if env is None:
            env = registry.make(name, **self.env_options.get(name, {}))
        me = threading.current_thread()
        self._busy[me] = env
        try:
            yield env
        except BaseException:
            # After a crash the environment's state is unknown: the next item gets a new one.
            with contextlib.suppress(Exception):
                env.close()
            raise
        finally:
            self._busy.pop(me, None)
        if self.abandoned():  # returned after its deadline: its state is unknown too
            with contextlib.suppress(Exception):
                env.close()
            return
        with self._lock:
            self._free[key].append(env)

    def teardown(self) -> None:
        for envs in self._free.values():
            for env in envs:
                with contextlib.suppress(Exception):
                    env.close()
        self._free = {}

    def failure(self, item_id: str, task_id: str, stage: str, exc: BaseException) -> Any:
        row = Failure.of(exc, item_id=item_id, task_id=task_id, stage=stage, run_id=self.run_id).row()
        return beam.pvalue.TaggedOutput(FAILURES, row)


class DescribeTask(_EnvDoFn):
    """Spec -> Task record, with the instruction the environment gives at reset."""

    def process(self, spec: dict[str, Any]) -> Iterator[Any]:
        tid = ids.task_id(spec["env"], spec["env_task"], spec["seed"])
        try:
            with self.env(spec["env"]) as env:
                reset = env.reset(TaskSpec(spec["env_task"], spec["seed"]))
        except Exception as exc:  # noqa: BLE001 - one task fails, not the run
            yield self.failure(tid, tid, "describe", exc)
            return
        yield Task.make(
            spec["env"], spec["env_task"], spec["seed"], reset.instruction, run_id=self.run_id
        ).row()


class Search(_EnvDoFn):
    """(task, policy) items -> trajectories, tree nodes and sibling pairs, `concurrency` searches
    in flight. Items run in the global window (the pipeline starts from Create), so outputs of
    one item may leave with a later item's, or at the end of the bundle."""

    def __init__(self, env_options: dict, run_id: str, settings: SearchSettings, options: dict) -> None:
        super().__init__(env_options, run_id)
        self.settings = settings
        # concurrency, pair_gap, keep_terminal_paths, model (policy options), deadline_margin_s
        self.options = options

    def setup(self) -> None:
        super().setup()
        self._local = threading.local()
        self._opened: list[Any] = []
        self._window = max(1, self.options["concurrency"])
        deadline_s = search_deadline_s(
            self.settings.budget.wall_s, self.options.get("deadline_margin_s", DEADLINE_MARGIN_S)
        )
        why = f"budget.wall_s * {DEADLINE_FACTOR:g} + deadline_margin_s"
        self._pool = DeadlinePool(self._window, deadline_s, "search", why, on_abandon=self._close_abandoned)
        self._pending: list[tuple[Future, tuple[dict, str]]] = []

    def teardown(self) -> None:
        self._pool.shutdown()  # never waits: a hung search's thread is a daemon, left behind
        for policy in self._opened:  # model policies hold connections (or a local model)
            with contextlib.suppress(Exception):
                getattr(policy, "close", lambda: None)()
        super().teardown()

    def policy(self, spec: str) -> Any:
        """One policy per spec and thread: a model policy keeps its client (and its meter)."""
        policies = self._local.__dict__.setdefault("policies", {})
        if spec not in policies:
            policies[spec] = make_policy(spec, **self.options.get("model", {}))
            with self._lock:
                self._opened.append(policies[spec])
        return policies[spec]

    def critic(self) -> Any:
        """The thread's critic model (Agent Q's AI feedback), when MCTS mixes one in."""
        m = self.settings.mcts
        if self.settings.method != "mcts" or m.critic_weight <= 0 or not m.critic:
            return None
        if getattr(self._local, "critic", None) is None:
            from trajforge.validators.critic import make_critic

            self._local.critic = make_critic(m.critic, **self.options.get("model", {}))
            with self._lock:
                self._opened.append(self._local.critic)
        return self._local.critic

    def abandoned(self) -> bool:
        return self._pool.abandoned()

    def _close_abandoned(self, thread: threading.Thread) -> None:
        """Close the environment of a search given up on, in the background: close may hang too."""
        env = self._busy.pop(thread, None)
        if env is not None:
            threading.Thread(target=_close_quietly, args=(env,), name="close-abandoned", daemon=True).start()

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, item: tuple[dict, str]) -> Iterator[Any]:
        self._pending.append((self._pool.submit(self._one, item), item))
        # Queue at most one window ahead, so memory stays bounded however big the bundle.
        if len(self._pending) >= 2 * self._window:
            self._pool.wait_any(f for f, _ in self._pending)
        yield from self._collect(done_only=True)

    def finish_bundle(self) -> Iterator[Any]:
        self._pool.wait_all(f for f, _ in self._pending)  # until each is done or past its deadline
        for out in self._collect(done_only=False):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, _global(out.value))
            else:
                yield _global(out)

    def _collect(self, done_only: bool) -> Iterator[Any]:
        """Outputs of finished searches (of all when not `done_only`: they are done by then)."""
        self._pool.expire()
        keep = []
        for future, item in self._pending:
            if done_only and not future.done():
                keep.append((future, item))
                continue
            try:
                yield from future.result()  # _one turns every error into a failure row
            except DeadlineExceeded as exc:
                yield self._search_failure(item, exc)
        self._pending = keep

    def _search_failure(self, item: tuple[dict, str], exc: BaseException) -> Any:
        task, policy_spec = item
        fid = ids.content_id(
            "failure", task=task["task_id"], policy=policy_spec, key=search_key(self.settings)
        )
        return self.failure(fid, task["task_id"], "search", exc)

    def _one(self, item: tuple[dict, str]) -> list[Any]:
        task, policy_spec = item
        key = search_key(self.settings)
        # The model's weights (or revision) are part of every id: new weights make new data.
        fingerprint = model_fingerprint(policy_spec, self.options.get("model", {}).get("revision"))
        if fingerprint:
            key = {**key, "model": fingerprint}
        seed = search_seed(task["task_id"], policy_spec, self.settings)
        try:
            with self.env(task["env"]) as env:
                result = search(
                    env,
                    TaskSpec(task["env_task"], task["seed"], task["instruction"]),
                    self.policy(policy_spec),
                    self.settings,
                    seed,
                    self.critic(),
                )
        except Exception as exc:  # noqa: BLE001 - one item fails, not the run
            return [self._search_failure(item, exc)]
        return self._records(task, policy_spec, key, result)

    def _records(self, task: dict, policy: str, key: dict, result: SearchResult) -> list[Any]:
        out: list[Any] = []
        # Every sample of best_of_n is data; of a tree, the best path unless asked for all.
        keep_all = self.settings.method != "mcts" or self.options["keep_terminal_paths"]
        paths = result.paths if keep_all else result.paths[:1]
        share = len(paths) or 1  # the search's cost, spread over what it produced
        for rank, path in enumerate(paths):
            record = self._trajectory(task, policy, key, path, result, share, rank)
            out.append(environment_verdict(record.row()))
            for index, png in sorted(path.screenshots.items()):
                shot = Artifact.make(record.trajectory_id, index, "screenshot", "image/png", png)
                out.append(beam.pvalue.TaggedOutput(ARTIFACTS, shot.row()))
        root = result.root
        if root is not None:
            node_ids = {}
            for node in result.nodes:
                nid = ids.content_id(
                    "node", task=task["task_id"], policy=policy, key=key, path=list(node.path)
                )
                node_ids[id(node)] = nid
                out.append(
                    beam.pvalue.TaggedOutput(
                        NODES,
                        TreeNode(
                            node_id=nid,
                            task_id=task["task_id"],
                            parent_id=node_ids.get(id(node.parent)),
                            depth=node.depth,
                            action=node.action,
                            visits=node.visits,
                            value=round(node.value, 9),
                            prior=node.prior,
                            reward=node.reward,
                            terminal=node.terminal,
                            run_id=self.run_id,
                            critic=node.critic,
                        ).row(),
                    )
                )
            best = result.paths[0] if result.paths else None
            if best is not None and best.success:
                for pair in sibling_pairs(
                    root,
                    [s.row() for s in best.steps],
                    env=task["env"],
                    instruction=result.instruction,
                    task_id=task["task_id"],
                    gap=self.options["pair_gap"],
                    run_id=self.run_id,
                    origin={"policy": policy, "search": key},
                ):
                    out.append(beam.pvalue.TaggedOutput(PAIRS, pair.row()))
        return out

    def _trajectory(
        self, task: dict, policy: str, key: dict, path: Path_, result: SearchResult, share: int, rank: int
    ) -> Trajectory:
        if self.settings.method == "mcts":
            tid = ids.content_id(
                "trajectory", task_id=task["task_id"], policy=policy, search=key, path=list(path.key)
            )
        else:
            tid = ids.trajectory_id(task["task_id"], policy, key, path.sample)
        return Trajectory(
            trajectory_id=tid,
            task_id=task["task_id"],
            env=task["env"],
            instruction=result.instruction,
            search=self.settings.method,
            policy=policy,
            steps=path.steps,
            num_steps=len(path.steps),
            total_reward=path.total_reward,
            success=path.success,
            tokens_in=result.tokens_in // share,
            tokens_out=result.tokens_out // share,
            cost_usd=result.cost_usd / share,
            model_calls=result.model_calls // share,
            cached_calls=result.cached_calls // share,
            cached_tokens_in=result.cached_tokens_in // share,
            cached_tokens_out=result.cached_tokens_out // share,
            cached_cost_usd=result.cached_cost_usd / share,
            env_steps=result.env_steps // share + (result.env_steps % share if rank == 0 else 0),
            wall_s=result.wall_s / share,
            final_observation=path.final_observation,
            stop_reason=path.stop_reason,
            run_id=self.run_id,
        )


def _close_quietly(env: Environment) -> None:
    with contextlib.suppress(Exception):
        env.close()


def _global(value: Any) -> WindowedValue:
    """What finish_bundle must emit: a value placed in the global window."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


def _pairs_of_task(item: tuple[str, Any], max_pairs: int) -> Iterator[dict]:
    _, trajectories = item
    for pair in trajectory_pairs(list(trajectories), max_pairs=max_pairs):
        yield pair.row()


def _write(pcoll: beam.PCollection, staging: Path, table: str, part: str) -> None:
    pcoll | f"Write {table}" >> beam.io.WriteToParquet(
        str(staging / table / part),
        schema=arrow.TABLES[table][0],
        file_name_suffix=".parquet",
        codec="zstd",
    )


def build(
    p: beam.Pipeline,
    specs: list[dict[str, Any]],
    *,
    staging: Path,
    run_id: str,
    env_options: dict[str, dict[str, Any]],
    policies: list[str],
    settings: SearchSettings,
    concurrency: int = 1,
    pair_gap: float = 0.1,
    keep_terminal_paths: bool = False,
    max_trajectory_pairs: int = 4,
    model_options: dict[str, Any] | None = None,
    judge: str | None = None,
    critique: bool = False,
    requests_in_flight: int = 64,
    deadline_margin_s: float = DEADLINE_MARGIN_S,
    only: dict[str, list[str]] | None = None,
    prior_trajectories: list[str] | None = None,
    part: str = "part",
) -> None:
    """`only` (task id -> policies) restricts the searches to those items (a retry of the failed
    items of a run; `specs` then holds their tasks); `prior_trajectories` (staged Parquet files
    of the same run) join the per-task pair mining, so a task's pairs see all its trajectories.
    Files are written as `staging/TABLE/PART-*.parquet`."""
    options = {
        "deadline_margin_s": deadline_margin_s,
        "concurrency": concurrency,
        "pair_gap": pair_gap,
        "keep_terminal_paths": keep_terminal_paths,
        "model": model_options or {},
    }
    described = (
        p
        | "Specs" >> beam.Create(specs)
        | "Reshuffle specs" >> beam.Reshuffle()
        | "Describe" >> beam.ParDo(DescribeTask(env_options, run_id)).with_outputs(FAILURES, main="tasks")
    )
    searched = (
        described.tasks
        | "Expand"
        >> beam.FlatMap(lambda t: [(t, p) for p in (policies if only is None else only[t["task_id"]])])
        | "Reshuffle work" >> beam.Reshuffle()
        | "Search"
        >> beam.ParDo(Search(env_options, run_id, settings, options)).with_outputs(
            FAILURES, NODES, PAIRS, ARTIFACTS, main="trajectories"
        )
    )
    trajectories = searched.trajectories
    if judge:
        trajectories = trajectories | "Judge" >> Judge(
            judge, model_options or {}, critique, requests_in_flight
        )
    mined = trajectories
    if prior_trajectories:
        retried = set(only or {})
        prior = (
            p
            | "Prior files" >> beam.Create(prior_trajectories)
            | "Read prior" >> beam.io.ReadAllFromParquet(columns=list(arrow.TRAJECTORIES.names))
            | "Of retried tasks" >> beam.Filter(lambda t: t["task_id"] in retried)
        )
        mined = (trajectories, prior) | "With prior" >> beam.Flatten()
    trajectory_level = (
        mined
        | "By task" >> beam.Map(lambda t: (t["task_id"], t))
        | "Group by task" >> beam.GroupByKey()
        | "Mine pairs" >> beam.FlatMap(_pairs_of_task, max_trajectory_pairs)
    )
    _write(described.tasks, staging, "tasks", part)
    _write(trajectories, staging, "trajectories", part)
    _write(searched[NODES], staging, "nodes", part)
    _write(searched[ARTIFACTS], staging, "artifacts", part)
    _write((searched[PAIRS], trajectory_level) | "All pairs" >> beam.Flatten(), staging, "pairs", part)
    failures = (described.failures, searched.failures) | "All failures" >> beam.Flatten()
    _write(failures, staging, "failures", part)


def run(pipeline_options: list[str], **kwargs: Any) -> None:
    """Build and run the pipeline to completion; raises if the runner fails."""
    with beam.Pipeline(options=PipelineOptions(pipeline_options)) as p:
        build(p, **kwargs)
