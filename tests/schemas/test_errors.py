"""One error vocabulary under one root, each kind carrying the reason code a failure row records."""

from __future__ import annotations

import pickle

import pytest

from trajforge.schemas.errors import (
    ConfigError,
    EnvironmentFailure,
    InferenceError,
    LakeError,
    TrajforgeError,
    ValidationFailed,
    reason_code,
)

KINDS = [
    (ConfigError("tasks: 0 is invalid; use 1 or more"), "config"),
    (EnvironmentFailure("the game crashed", reason="game_build"), "game_build"),
    (InferenceError("HTTP 503", reason="http_503", retryable=True, retry_after_s=2.0), "http_503"),
    (LakeError("the catalog is locked"), "lake"),
    (ValidationFailed("2 rows broke an expectation", "/tmp/report.json"), "validation_failed"),
]


@pytest.mark.parametrize(
    "error, code", KINDS, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v
)
def test_every_kind_is_a_trajforge_error_whose_failure_row_gets_its_code(error, code):
    assert isinstance(error, TrajforgeError) and reason_code(error) == code
    again = pickle.loads(pickle.dumps(error))  # as Beam's workers and Prefect send it
    assert (type(again), str(again), again.__dict__) == (type(error), str(error), error.__dict__)


def test_the_old_import_paths_name_the_same_classes():
    from trajforge.environments import base
    from trajforge.flows import run
    from trajforge.flows.staging import RunLocked
    from trajforge.inference import client
    from trajforge.store import lake

    assert (base.ConfigError, base.EnvironmentFailure) == (ConfigError, EnvironmentFailure)  # plugin protocol
    assert (client.InferenceError, lake.LakeError, run.ValidationFailed) == (
        InferenceError,
        LakeError,
        ValidationFailed,
    )
    assert reason_code(RunLocked("abc", "42")) == "run_locked"
    assert reason_code(TimeoutError()) == "timeout" and reason_code(KeyError("x")) == "internal_error"
