"""The closed loop in small: oracle trajectories of a few TextWorld games become SFT rows (the
exporter's conversation format, without the oracle's constant thought), `trajforge train` fits a
scratch model on them, and on held-out games the trained model's first choices along the oracle's
path beat the untrained model's (same tokenizer, same initial weights)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajforge.environments.textworld import TextWorldEnvironment, ensure_games
from trajforge.recipes.evaluate import evaluate
from trajforge.recipes.models import ScratchSize
from trajforge.recipes.train import TrainError, TrainSettings, train
from trajforge.schemas.conversation import messages
from trajforge.synthesizers.policies import OraclePolicy
from trajforge.synthesizers.rollout import rollout

pytest.importorskip("trl")
pytestmark = [
    pytest.mark.filterwarnings("ignore::jericho.UnsupportedGameWarning"),
    pytest.mark.filterwarnings("ignore::jericho.TruncatedInputActionWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SMALL = ScratchSize(vocab_size=1024, hidden_size=64, intermediate_size=192, layers=2)


@pytest.fixture(scope="module")
def games(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("tw-cache")
    env = TextWorldEnvironment(cache_dir=str(cache))  # the smallest cooking games (~2 s each)
    specs = env.task_specs(7, seed=3)
    ensure_games([s.env_task for s in specs], cache, workers=2)
    yield env, specs[:5], specs[5:]
    env.close()


@pytest.fixture(scope="module")
def sft_data(games, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env, train_games, _ = games
    rows = []
    for i, task in enumerate(train_games):
        episode = rollout(env, task, OraclePolicy(), seed=i, max_steps=20, timeout_s=60)
        assert episode.success
        steps = [{**s.row(), "thought": None} for s in episode.steps]  # "Following the known solution."
        rows.append({"messages": messages("textworld", episode.instruction, steps), "task_id": task.env_task})
    data = tmp_path_factory.mktemp("sft")
    (data / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), data / "data" / "train-00000-of-00001.parquet")
    return data


def test_a_trained_model_beats_the_untrained_one_on_held_out_games(games, sft_data, tmp_path):
    env, train_games, held = games
    assert not {t.env_task for t in train_games} & {t.env_task for t in held}
    untrained = tmp_path / "untrained"
    train(TrainSettings("sft", sft_data, "scratch", untrained, steps=0, scratch=SMALL))
    trained = tmp_path / "trained"
    result = train(
        TrainSettings("sft", sft_data, str(untrained), trained, steps=30, learning_rate=3e-3, batch_size=4)
    )
    assert result.losses[-1] < result.losses[0] / 2
    options = {"max_steps": 8, "max_tokens": 8, "cache_dir": None, "episodes": False}
    before = evaluate(f"hf:{untrained}", env, held, **options)
    after = evaluate(f"hf:{trained}", env, held, **options)
    assert after.decisions == before.decisions >= 2 * len(held)  # the oracle's path: 3 steps a game
    assert after.correct >= before.correct + 2, (before, after)


def test_bad_input_is_refused_before_anything_is_written(sft_data, tmp_path):
    with pytest.raises(TrainError, match="--format dpo needs the columns prompt, chosen, rejected"):
        train(TrainSettings("dpo", sft_data, "scratch", tmp_path / "m", steps=1))
    with pytest.raises(TrainError, match="--model nowhere: not a model directory"):
        train(TrainSettings("sft", sft_data, "nowhere", tmp_path / "m", steps=1))
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))
