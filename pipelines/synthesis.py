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
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

# Beam warns at import that Google Cloud clients are absent; they are not needed here.
logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("apitools not found"))

import apache_beam as beam  # noqa: E402
import pyarrow as pa  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.timestamp import MIN_TIMESTAMP  # noqa: E402
from apache_beam.utils.windowed_value import WindowedValue  # noqa: E402

from trajforge.environments import goals, registry  # noqa: E402
from trajforge.environments.base import Environment, TaskSpec  # noqa: E402
from trajforge.pipelines.deadlines import DeadlineExceeded, DeadlinePool  # noqa: E402
from trajforge.pipelines.judging import Judge  # noqa: E402
from trajforge.pipelines.spec import DEADLINE_FACTOR, PipelineSpec  # noqa: E402
from trajforge.schemas import arrow, ids  # noqa: E402
from trajforge.schemas.records import Failure, Task  # noqa: E402
from trajforge.synthesizers import records  # noqa: E402
from trajforge.synthesizers.pairs import trajectory_pairs  # noqa: E402
from trajforge.synthesizers.policies import make_policy  # noqa: E402
from trajforge.synthesizers.search import consults_critic, search, search_key, search_seed  # noqa: E402
from trajforge.validators.verifier import environment_verdict  # noqa: E402

FAILURES, NODES, PAIRS, ARTIFACTS, COUNTS = "failures", "nodes", "pairs", "artifacts", records.COUNTS
STAGED_TABLES = ("tasks", "trajectories", "failures", "pairs", "nodes", "artifacts")
# COUNTS rows: staged beside the tables for the flow to sum into runs.counts, never committed.
COUNTS_SCHEMA = pa.schema(
    [
        ("count_id", pa.string()),
        ("task_id", pa.string()),
        ("stage", pa.string()),
        ("key", pa.string()),
        ("n", pa.int64()),
    ]
)


class _EnvDoFn(beam.DoFn):
    """A pool of live environments per name, for the life of the worker."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

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
        if env is None:  # wrapped: a synthesized (`goal:`) task runs its setup and its goal's checker
            env = goals.wrap(registry.make(name, **self.spec.env_options.get(name, {})))
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
        row = Failure.of(exc, item_id=item_id, task_id=task_id, stage=stage, run_id=self.spec.run_id).row()
        return beam.pvalue.TaggedOutput(FAILURES, row)


class DescribeTask(_EnvDoFn):
    """Planned task (its task_id minted when the flow planned it) -> Task record, with the
    instruction the environment gives at reset; a synthesized task keeps its own fields."""

    def process(self, spec: dict[str, Any]) -> Iterator[Any]:
        tid = spec["task_id"]
        synthesized = spec.get("task") or {}
        try:
            with self.env(spec["env"]) as env:
                reset = env.reset(
                    TaskSpec(spec["env_task"], spec["seed"], synthesized.get("instruction", ""))
                )
        except Exception as exc:  # noqa: BLE001 - one task fails, not the run
            yield self.failure(tid, tid, "describe", exc)
            return
        yield Task(
            **{
                **synthesized,
                "task_id": tid,
                "env": spec["env"],
                "env_task": spec["env_task"],
                "seed": spec["seed"],
                "instruction": reset.instruction,
                "run_id": self.spec.run_id,
            }
        ).row()


class Search(_EnvDoFn):
    """(task, policy) items -> trajectories, tree nodes and sibling pairs, `concurrency` searches
    in flight. Items run in the global window (the pipeline starts from Create), so outputs of
    one item may leave with a later item's, or at the end of the bundle."""

    def setup(self) -> None:
        super().setup()
        self._local = threading.local()
        self._opened: list[Any] = []
        self._window = max(1, self.spec.concurrency)
        why = f"budget.wall_s * {DEADLINE_FACTOR:g} + deadline_margin_s"
        self._pool = DeadlinePool(
            self._window, self.spec.search_deadline_s, "search", why, on_abandon=self._close_abandoned
        )
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
            policies[spec] = make_policy(spec, **self.spec.model_options)
            with self._lock:
                self._opened.append(policies[spec])
        return policies[spec]

    def critic(self) -> Any:
        """The thread's critic model (Agent Q's AI feedback), when the search mixes one in."""
        m = self.spec.settings.mcts
        if not consults_critic(self.spec.settings):
            return None
        if getattr(self._local, "critic", None) is None:
            from trajforge.validators.critic import make_critic

            self._local.critic = make_critic(m.critic, **self.spec.model_options)
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
        task, policy = item
        fid = ids.search_failure_id(task["task_id"], policy, search_key(self.spec.settings))
        return self.failure(fid, task["task_id"], "search", exc)

    def _one(self, item: tuple[dict, str]) -> list[Any]:
        task, policy_spec = item
        spec, settings = self.spec, self.spec.settings
        key = records.item_key(policy_spec, settings, spec.model_options.get("revision"))
        seed = search_seed(task["task_id"], policy_spec, settings)
        try:
            with self.env(task["env"]) as env:
                result = search(
                    env,
                    TaskSpec(task["env_task"], task["seed"], task["instruction"]),
                    self.policy(policy_spec),
                    settings,
                    seed,
                    self.critic(),
                )
                tools = getattr(env, "tools", None)
        except Exception as exc:  # noqa: BLE001 - one item fails, not the run
            return [self._search_failure(item, exc)]
        rows = records.search_records(
            task,
            policy_spec,
            key,
            result,
            settings,
            run_id=spec.run_id,
            keep_terminal_paths=spec.keep_terminal_paths,
            pair_gap=spec.pair_gap,
            tools=tools,
        )
        return [
            environment_verdict(row)
            if table == records.TRAJECTORIES
            else beam.pvalue.TaggedOutput(table, row)
            for table, row in rows
        ]


def _close_quietly(env: Environment) -> None:
    with contextlib.suppress(Exception):
        env.close()


def _global(value: Any) -> WindowedValue:
    """What finish_bundle must emit: a value placed in the global window."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


def _pairs_of_task(item: tuple[str, Any], max_pairs: int) -> Iterator[Any]:
    task_id, trajectories = item
    dropped: Counter = Counter()
    for pair in trajectory_pairs(list(trajectories), max_pairs=max_pairs, dropped=dropped):
        yield pair.row()
    for table, row in records.count_rows(dropped, "pairs:trajectory", task_id):
        yield beam.pvalue.TaggedOutput(table, row)


def _write(pcoll: beam.PCollection, staging: Path, table: str, part: str) -> None:
    pcoll | f"Write {table}" >> beam.io.WriteToParquet(
        str(staging / table / part),
        schema=COUNTS_SCHEMA if table == COUNTS else arrow.TABLES[table][0],
        file_name_suffix=".parquet",
        codec="zstd",
    )


def build(p: beam.Pipeline, tasks: list[dict[str, Any]], spec: PipelineSpec, staging: Path) -> None:
    """`tasks`: planned task specs (task_id, env, env_task, seed). Files are written as
    `staging/TABLE/PART-*.parquet` (PART: `spec.part`)."""
    described = (
        p
        | "Specs" >> beam.Create(tasks)
        | "Reshuffle specs" >> beam.Reshuffle()
        | "Describe" >> beam.ParDo(DescribeTask(spec)).with_outputs(FAILURES, main="tasks")
    )
    searched = (
        described.tasks
        | "Expand" >> beam.FlatMap(lambda t: [(t, policy) for policy in spec.policies_of(t["task_id"])])
        | "Reshuffle work" >> beam.Reshuffle()
        | "Search"
        >> beam.ParDo(Search(spec)).with_outputs(
            FAILURES, NODES, PAIRS, ARTIFACTS, COUNTS, main="trajectories"
        )
    )
    trajectories, failures = searched.trajectories, [described.failures, searched.failures]
    if spec.judge:
        judged = trajectories | "Judge" >> Judge(
            spec.judge, spec.model_options, spec.critique, spec.requests_in_flight
        )
        trajectories = judged["trajectories"]
        failures.append(judged["failures"])
    mined = trajectories
    if spec.prior_trajectories:
        retried = set(spec.only or {})
        prior = (
            p
            | "Prior files" >> beam.Create(spec.prior_trajectories)
            | "Read prior" >> beam.io.ReadAllFromParquet(columns=list(arrow.TRAJECTORIES.names))
            | "Of retried tasks" >> beam.Filter(lambda t: t["task_id"] in retried)
        )
        mined = (trajectories, prior) | "With prior" >> beam.Flatten()
    trajectory_level = (
        mined
        | "By task" >> beam.Map(lambda t: (t["task_id"], t))
        | "Group by task" >> beam.GroupByKey()
        | "Mine pairs"
        >> beam.FlatMap(_pairs_of_task, spec.max_trajectory_pairs).with_outputs(COUNTS, main="pairs")
    )
    part = spec.part
    _write(described.tasks, staging, "tasks", part)
    _write(trajectories, staging, "trajectories", part)
    _write(searched[NODES], staging, "nodes", part)
    _write(searched[ARTIFACTS], staging, "artifacts", part)
    _write((searched[PAIRS], trajectory_level.pairs) | "All pairs" >> beam.Flatten(), staging, "pairs", part)
    _write(tuple(failures) | "All failures" >> beam.Flatten(), staging, "failures", part)
    counts = (searched[COUNTS], trajectory_level[COUNTS]) | "All counts" >> beam.Flatten()
    _write(counts, staging, COUNTS, part)


def run(pipeline_options: list[str], tasks: list[dict[str, Any]], spec: PipelineSpec, staging: Path) -> None:
    """Build and run the pipeline to completion; raises if the runner fails."""
    with beam.Pipeline(options=PipelineOptions(pipeline_options)) as p:
        build(p, tasks, spec, staging)
