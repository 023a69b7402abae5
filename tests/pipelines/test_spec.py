"""The pipeline's spec travels to every worker: it pickles (with Python's pickle and Beam's own
pickler, which a distributed runner uses) and cannot be changed on the way."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from apache_beam.internal import pickler

from trajforge.flows.config import RunConfig
from trajforge.flows.run import pipeline_spec
from trajforge.pipelines.spec import PipelineSpec


def spec() -> PipelineSpec:
    config = RunConfig(
        envs=["toy"], search="mcts", judge="openai:http://127.0.0.1:9/v1#judge", critique=True, concurrency=3
    )
    return pipeline_spec(
        config, "run", "part-retry1", only={"t1": ["random"]}, prior_trajectories=["a.parquet"]
    )


def test_the_spec_of_a_run_survives_both_picklers_whole():
    original = spec()
    assert pickle.loads(pickle.dumps(original)) == original
    assert pickler.loads(pickler.dumps(original)) == original
    assert original.settings.method == "mcts" and original.concurrency == 3 and original.part == "part-retry1"
    assert original.policies_of("t1") == ["random"] and original.policies_of("t2") == []


def test_the_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec().judge = None  # type: ignore[misc]
