"""The run config's budget and mcts sections reach the search's settings field by field, by name:
a field added to one side and not the other fails here instead of shifting the rest."""

from __future__ import annotations

import dataclasses

from trajforge.flows.config import BudgetConfig, MCTSConfig, RunConfig
from trajforge.synthesizers.search import Budget, MCTSSettings

PAIR_MINING = {"pair_gap", "keep_terminal_paths"}  # MCTSConfig fields the pipeline keeps
# A value other than the default for every field of each section.
BUDGET = {"env_steps": 77, "simulations": 55, "wall_s": 12.5, "tokens": 999}
MCTS = {"expand_k": 3, "c_puct": 1.25, "rollout_depth": 2, "branching": "replay", "critic_weight": 0.3}


def test_every_budget_and_mcts_setting_of_the_config_reaches_the_search_under_its_own_name():
    assert set(BUDGET) == set(BudgetConfig.model_fields), "give the new budget field a value above"
    assert set(MCTS) == set(MCTSConfig.model_fields) - PAIR_MINING, "give the new mcts field a value above"
    config = RunConfig(search="mcts", judge="openai:http://127.0.0.1:9/v1#judge", budget=BUDGET, mcts=MCTS)
    settings = config.search_settings()
    assert dataclasses.asdict(settings.budget) == BUDGET
    assert dataclasses.asdict(settings.mcts) == {**MCTS, "critic": "openai:http://127.0.0.1:9/v1#judge"}
    for section, defaults in ((BudgetConfig(), Budget()), (MCTSConfig(), MCTSSettings())):
        for name, value in dataclasses.asdict(defaults).items():  # the same defaults on both sides
            assert getattr(section, name, value) == value, name
