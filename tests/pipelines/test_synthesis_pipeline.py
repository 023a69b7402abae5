from pathlib import Path

import pytest

from trajforge.environments.toy import ToyEnvironment
from trajforge.flows.staging import RunDir
from trajforge.pipelines import synthesis as pipeline
from trajforge.synthesizers.search import Budget, SearchSettings
from trajforge.validators.dedup import dedupe

SPECS = [{"env": "toy", "env_task": s.env_task, "seed": s.seed} for s in ToyEnvironment().task_specs(12, 3)]
CRASH = {"env": "toy", "env_task": "corridor-3-1-crash", "seed": 9}


def _stage(tmp: Path, options: list[str], specs=SPECS, concurrency: int = 1) -> RunDir:
    run_dir = RunDir(tmp, "run")
    pipeline.run(
        ["--runner=FnApiRunner", *options],
        specs=specs,
        staging=run_dir.staging,
        run_id="run",
        env_options={},
        policies=["oracle", "random"],
        settings=SearchSettings(method="best_of_n", max_steps=12, samples=2, budget=Budget(env_steps=100)),
        concurrency=concurrency,
    )
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


def test_a_crashing_environment_fails_only_its_items(baseline):
    failures = baseline.read_staged("failures").to_pylist()
    assert len(failures) == 2  # one search per policy of the crashing task
    assert {f["reason"] for f in failures} == {"EnvironmentFailure"}
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
