"""A plugin package registers an environment through an entry point; trajforge finds it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from trajforge.environments import registry
from trajforge.environments.base import ConfigError, Environment
from trajforge.synthesizers.policies import OraclePolicy
from trajforge.synthesizers.rollout import rollout

PLUGIN = """
from trajforge.environments.toy import ToyEnvironment

class LongCorridor(ToyEnvironment):
    name = "longcorridor"

    def __init__(self, max_length: int = 9) -> None:
        super().__init__(max_length=max_length)
"""


def install_plugin(root: Path) -> None:
    """What `pip install` of a plugin leaves behind: a module and its dist-info."""
    (root / "longcorridor_plugin.py").write_text(PLUGIN)
    info = root / "longcorridor_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: longcorridor-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[trajforge.environments]\nlongcorridor = longcorridor_plugin:LongCorridor\n"
    )


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("longcorridor_plugin", None)


def test_a_plugin_environment_is_found_and_runs(plugin):
    assert "longcorridor" in registry.available()
    env = registry.make("longcorridor", max_length=7)
    assert isinstance(env, Environment)
    spec = env.task_specs(1, seed=0)[0]
    episode = rollout(env, spec, OraclePolicy(), seed=0, max_steps=50, timeout_s=10)
    assert episode.success


def test_builtins_are_listed_and_unknown_names_explain_the_fix():
    assert {"toy", "textworld"} <= set(registry.available())
    with pytest.raises(ConfigError, match=r"env: unknown environment 'nope'.*entry-point group"):
        registry.make("nope")
