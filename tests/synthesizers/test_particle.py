"""`particle`: particle filtering through the same entry point and budget as the other methods."""

from __future__ import annotations

from trajforge.environments.base import TaskSpec
from trajforge.environments.toy import ToyEnvironment
from trajforge.schemas.kinds import SearchMethod, values
from trajforge.synthesizers.policies import RandomPolicy
from trajforge.synthesizers.search import METHODS, Budget, MCTSSettings, SearchSettings, search, search_key

TASK = TaskSpec("corridor-5-3", seed=1)
BUDGET = Budget(env_steps=400)


def particle(task=TASK, seed=7, budget=BUDGET, samples=10, max_steps=20, value=None, **kw):
    settings = SearchSettings(
        method="particle", max_steps=max_steps, samples=samples, budget=budget, mcts=MCTSSettings(**kw)
    )
    return search(ToyEnvironment(max_length=12), task, RandomPolicy(), settings, seed, value)


def outline(result):
    return [
        (p.key, p.success, p.total_reward, p.stop_reason, p.sample) for p in result.paths
    ], result.env_steps


class TowardsTheDoor:
    """A value for the corridor: 1 for the action towards the key, then the door; 0 otherwise."""

    client = None

    def __init__(self, key_room: int) -> None:
        self.key_room, self.calls = key_room, 0

    def values(self, instruction, observation, actions):
        self.calls += 1
        room = int(observation.split("room ")[1].split(" ")[0])
        best = "take key" if "take key" in actions else "open door" if "open door" in actions else None
        best = best or ("go east" if "You carry a key" in observation or room < self.key_room else "go west")
        return {a: 1.0 if a == best else 0.0 for a in actions}


def test_particles_find_the_door_and_every_finished_path_is_a_trajectory_best_first():
    result = particle()
    best = result.paths[0]
    assert best.success and best.steps[-1].action == "open door" and best.total_reward == 1.0
    assert result.simulations == 10 and result.env_steps <= 400
    assert len({p.key for p in result.paths}) == len(result.paths) > 1  # distinct paths
    assert [p.sample for p in result.paths] == list(range(len(result.paths)))
    ranks = [(not p.success, -p.total_reward, len(p.steps)) for p in result.paths]
    assert ranks == sorted(ranks)
    assert all(p.stop_reason in ("done", "max_steps") for p in result.paths)


def test_same_seed_same_particles_other_seed_other_particles():
    assert outline(particle(seed=7)) == outline(particle(seed=7))
    assert outline(particle(seed=7)) != outline(particle(seed=8))


def test_the_budget_binds():
    spent = particle(budget=Budget(env_steps=25))
    assert spent.env_steps == 25 and spent.stop_reason == "env_steps"
    assert spent.paths and all(len(p.steps) <= 25 for p in spent.paths)
    assert particle(budget=Budget(env_steps=400, wall_s=1e-9)).stop_reason == "wall_s"
    assert particle(budget=Budget(env_steps=400, simulations=3)).simulations == 3


class Counting(RandomPolicy):
    acts = 0

    def act(self, ctx):
        self.acts += 1
        return super().act(ctx)


def test_particles_that_share_a_prefix_step_it_once_and_both_branchings_agree():
    runs = {}
    for branching in ("snapshot", "replay"):
        policy, critic = Counting(), TowardsTheDoor(key_room=3)
        settings = SearchSettings(
            method="particle",
            max_steps=20,
            samples=10,
            budget=Budget(env_steps=10**6),
            mcts=MCTSSettings(branching=branching, critic_weight=0.5, critic="toy"),
        )
        result = search(ToyEnvironment(max_length=6), TASK, policy, settings, 7, critic)
        runs[branching] = (outline(result)[0], result.env_steps, policy.acts)
    (snap, snap_steps, acts), (replay, replay_steps, _) = runs["snapshot"], runs["replay"]
    assert snap == replay and snap[0][1]  # the same particles, a success
    assert snap_steps < acts / 2  # resampled particles share prefixes: each stepped once
    assert replay_steps > snap_steps  # replay also steps to reposition the environment


def test_with_a_value_particles_solve_a_long_corridor_more_often_than_best_of_n_on_the_same_budget():
    """corridor-12-4: a random walk rarely takes the key and reaches the door in 30 steps.
    Measured over 20 seeds, 300 env steps each: best_of_n 2, particle without a value 3,
    particle with the value 20."""
    task, budget = TaskSpec("corridor-12-4", seed=1), Budget(env_steps=300)
    solved = {"best_of_n": 0, "particle": 0}
    for seed in range(10):
        bon = SearchSettings(method="best_of_n", max_steps=30, samples=10, budget=budget)
        solved["best_of_n"] += bool(
            search(ToyEnvironment(12), task, RandomPolicy(), bon, seed).paths[0].success
        )
        critic = TowardsTheDoor(key_room=4)
        result = particle(task, seed, budget, max_steps=30, value=critic, critic_weight=0.5, critic="toy")
        solved["particle"] += bool(result.paths[0].success)
        assert critic.calls > 0 and result.env_steps <= 300
    assert solved["particle"] == 10 and solved["particle"] > solved["best_of_n"]


def test_without_weight_the_critic_is_not_asked():
    critic = TowardsTheDoor(key_room=3)
    assert outline(particle(value=critic)) == outline(particle())
    assert critic.calls == 0


def test_its_identity_holds_the_particle_count_and_the_critic_only_when_used():
    key = search_key(SearchSettings(method="particle", samples=8))
    assert key["search"] == "particle" and key["samples"] == 8 and "critic" not in key
    weighted = search_key(SearchSettings(method="particle", mcts=MCTSSettings(critic_weight=0.5, critic="j")))
    assert weighted["critic"] == {"critic_weight": 0.5, "critic": "j"}


def test_particle_is_a_declared_method_with_an_implementation():
    assert "particle" in values(SearchMethod) and set(METHODS) == set(values(SearchMethod))


def test_its_rows_are_every_finished_path_named_by_rank_and_mined_into_trajectory_pairs():
    from trajforge.schemas import ids
    from trajforge.synthesizers.pairs import trajectory_pairs
    from trajforge.synthesizers.records import TRAJECTORIES, item_key, search_records

    settings = SearchSettings(method="particle", max_steps=8, samples=12, budget=Budget(env_steps=400))
    task = {"task_id": "t", "env": "toy", "env_task": "corridor-3-1", "seed": 2}
    result = search(ToyEnvironment(), TaskSpec("corridor-3-1", 2), RandomPolicy(), settings, seed=5)
    key = item_key("random", settings)
    made = search_records(task, "random", key, result, settings, run_id="r")
    assert {table for table, _ in made} == {TRAJECTORIES}  # no tree: no nodes, no sibling pairs
    rows = [row for _, row in made]
    assert [r["trajectory_id"] for r in rows] == [
        ids.trajectory_id("t", "random", key, i) for i in range(len(rows))
    ]
    assert len(rows) == len(result.paths) and sum(r["env_steps"] for r in rows) == result.env_steps
    assert all(r["search"] == "particle" for r in rows)
    assert any(r["success"] for r in rows) and any(not r["success"] for r in rows)
    assert trajectory_pairs(rows, max_pairs=3)


def test_a_run_gives_particle_its_critic_like_mcts_and_no_other_method():
    from trajforge.synthesizers.search import consults_critic

    weighted = MCTSSettings(critic_weight=0.5, critic="judge")
    assert consults_critic(SearchSettings(method="particle", mcts=weighted))
    assert consults_critic(SearchSettings(method="mcts", mcts=weighted))
    assert not consults_critic(SearchSettings(method="best_of_n", mcts=weighted))
    assert not consults_critic(SearchSettings(method="particle", mcts=MCTSSettings(critic="judge")))


def test_an_oracle_particle_reads_the_state_of_its_own_prefix():
    from trajforge.synthesizers.policies import OraclePolicy

    for branching in ("snapshot", "replay"):
        settings = SearchSettings(
            method="particle", max_steps=20, samples=4, mcts=MCTSSettings(branching=branching)
        )
        result = search(ToyEnvironment(max_length=6), TASK, OraclePolicy(), settings, seed=1)
        assert [p.key for p in result.paths] == [
            ("go east",) * 3 + ("take key", "go east", "go east", "open door")
        ]
        assert result.paths[0].success
        if branching == "snapshot":
            assert result.env_steps == 7  # four particles, one line of play, each step stepped once
