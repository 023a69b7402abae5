import threading
import time
from pathlib import Path

import pytest

from trajforge.environments.toy import ToyEnvironment
from trajforge.flows.staging import RunDir
from trajforge.pipelines import synthesis as pipeline
from trajforge.pipelines.spec import PipelineSpec, planned_task, search_deadline_s
from trajforge.schemas import ids
from trajforge.synthesizers.search import Budget, SearchSettings
from trajforge.validators.dedup import dedupe

SPECS = [planned_task("toy", s.env_task, s.seed) for s in ToyEnvironment().task_specs(12, 3)]
CRASH = planned_task("toy", "corridor-3-1-crash", 9)
HANG = planned_task("toy", "corridor-3-1-hang", 9)


def _stage(tmp: Path, options: list[str], specs=SPECS, concurrency: int = 1, **kwargs) -> RunDir:
    run_dir = RunDir(tmp, "run")
    spec = PipelineSpec(
        run_id="run",
        policies=["oracle", "random"],
        settings=kwargs.pop(
            "settings",
            SearchSettings(method="best_of_n", max_steps=12, samples=2, budget=Budget(env_steps=100)),
        ),
        concurrency=concurrency,
        **kwargs,
    )
    pipeline.run(["--runner=FnApiRunner", *options], specs, spec, run_dir.staging)
    return run_dir


def _ids(run_dir: RunDir, table: str, key: str) -> list[str]:
    result = dedupe(run_dir.read_staged(table).to_pylist(), key)
    assert result.conflicts == []
    ids = [r[key] for r in result.rows]
    assert len(ids) == len(set(ids))
    return sorted(ids)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> RunDir:
    return _stage(tmp_path_factory.mktemp("base"), [], SPECS + [CRASH])


def test_every_task_and_sample_is_staged(baseline):
    assert len(_ids(baseline, "tasks", "task_id")) == len(SPECS) + 1
    trajectories = baseline.read_staged("trajectories").to_pylist()
    assert len(trajectories) == len(SPECS) * 2 * 2
    assert all(t["success"] for t in trajectories if t["policy"] == "oracle")
    assert {t["verifier_verdict"] for t in trajectories} <= {"pass", "fail"}


def test_the_staged_tasks_carry_the_ids_minted_when_they_were_planned(baseline):
    assert _ids(baseline, "tasks", "task_id") == sorted(s["task_id"] for s in SPECS + [CRASH])


def test_a_crashing_environment_fails_only_its_items(baseline):
    failures = baseline.read_staged("failures").to_pylist()
    assert len(failures) == 2  # one search per policy of the crashing task
    assert {f["reason"] for f in failures} == {"env_crash"}
    assert {f["stage"] for f in failures} == {"search"}
    assert all("crashed" in f["detail"] for f in failures)


@pytest.mark.parametrize(
    "options",
    [
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        ["--direct_runner_bundle_repeat=1"],
    ],
    ids=["multi_processing", "bundle_repeat"],
)
def test_same_ids_under_other_execution(tmp_path, baseline, options):
    other = _stage(tmp_path, options, SPECS + [CRASH], concurrency=3 if "bundle" in options[0] else 1)
    for table, key in [("tasks", "task_id"), ("trajectories", "trajectory_id"), ("failures", "item_id")]:
        assert _ids(other, table, key) == _ids(baseline, table, key)


def test_a_hanging_search_fails_with_timeout_and_the_others_finish(tmp_path):
    budget = Budget(env_steps=100, wall_s=1.0)
    settings = SearchSettings(method="best_of_n", max_steps=12, samples=2, budget=budget)
    deadline = search_deadline_s(budget.wall_s, margin_s=1.0)
    staged: list[RunDir] = []
    # In a thread of its own, so that a pipeline that waits on the hung search fails this test
    # instead of hanging it.
    runner = threading.Thread(
        target=lambda: staged.append(
            _stage(tmp_path, [], SPECS[:4] + [HANG], concurrency=2, settings=settings, deadline_margin_s=1.0)
        ),
        daemon=True,
    )
    start = time.monotonic()
    runner.start()
    # Both searches of the hanging task (one per policy) may be in flight at once; each is
    # abandoned at its deadline, never waited for (they sleep for a day).
    runner.join(timeout=2 * deadline + 20)
    assert not runner.is_alive(), "the pipeline waited on a hung search"
    assert time.monotonic() - start < 2 * deadline + 20
    failures = staged[0].read_staged("failures").to_pylist()
    hang_id = ids.task_id("toy", HANG["env_task"], HANG["seed"])
    assert [(f["task_id"], f["reason"], f["stage"]) for f in failures] == [(hang_id, "timeout", "search")] * 2
    assert all("deadline" in f["detail"] for f in failures)
    assert len(staged[0].read_staged("trajectories").to_pylist()) == 4 * 2 * 2  # every other search
    # What is left of the hung searches are daemon threads: they cannot hold the interpreter's exit.
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("search"))
