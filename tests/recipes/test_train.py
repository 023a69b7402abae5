"""`trajforge train` at its edges: the missing extra, a refused --out, DPO rows, a loadable model."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from trajforge.cli import app
from trajforge.recipes.models import ScratchSize
from trajforge.recipes.train import RECORD, TrainSettings, train

pytest.importorskip("trl")
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SMALL = ScratchSize(vocab_size=300, hidden_size=32, intermediate_size=64, layers=1, heads=2, kv_heads=1)


def _dpo_rows(folder: Path, chosen: str = "take key") -> Path:
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "Play."},
                {"role": "user", "content": f"Room {i}: a key."},
            ],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": "go west"}],
        }
        for i in range(8)
    ]
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def test_without_the_extra_the_command_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # as if trl were not installed
    data = _dpo_rows(tmp_path / "dpo")
    result = CliRunner().invoke(
        app,
        ["train", "--format", "dpo", "--data", str(data), "--model", "scratch", "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "pip install 'trajforge[train]'" in result.output
    assert not (tmp_path / "m").exists()


def test_a_non_empty_out_is_refused_and_left_alone(tmp_path):
    data, out = _dpo_rows(tmp_path / "dpo"), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(
        app, ["train", "--format", "dpo", "--data", str(data), "--model", "scratch", "--out", str(out)]
    )
    assert result.exit_code == 2 and "--out" in result.output and "not empty" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_dpo_trains_on_preference_rows_and_the_model_serves_as_an_hf_policy(tmp_path):
    from trajforge.inference.client import ChatRequest
    from trajforge.inference.local import LocalBackend

    data = _dpo_rows(tmp_path / "dpo")
    start = tmp_path / "start"
    train(TrainSettings("dpo", data, "scratch", start, steps=0, scratch=SMALL))
    tuned = tmp_path / "tuned"
    result = train(TrainSettings("dpo", data, str(start), tuned, steps=3, learning_rate=1e-2, batch_size=4))
    assert len(result.losses) == 3 and (tuned / RECORD).is_file()
    ask = [{"role": "user", "content": "Room 9: a key."}]

    def margin(model: Path) -> float:
        """log P(take key) - log P(go west) after the prompt, as the hf: policy scores choices."""
        backend = LocalBackend(model)
        lps = [
            sum(
                t.logprob
                for t in backend.chat(ChatRequest(ask, choice=(c,), logprobs=True)).choices[0].logprobs
            )
            for c in ("take key", "go west")
        ]
        return lps[0] - lps[1]

    assert margin(tuned) > margin(start) and margin(tuned) > 0


def test_rows_longer_than_max_length_are_reported_not_silently_cut(tmp_path):
    data = _dpo_rows(tmp_path / "dpo", chosen="take key, then open the chest with it and take the gold")
    start = tmp_path / "start"
    train(TrainSettings("dpo", data, "scratch", start, steps=0, scratch=SMALL))
    args = ["train", "--format", "dpo", "--data", str(data), "--model", str(start), "--steps", "1"]
    cut = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "cut"), "--max-length", "24"])
    assert cut.exit_code == 0, cut.output
    assert "warning: of 8 rows, 8 are longer than --max-length 24 tokens" in cut.output
    none = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "none"), "--max-length", "16"])
    assert none.exit_code == 2 and "every row's prompt is longer" in none.output
    assert not (tmp_path / "none").exists()
    whole = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "whole"), "--max-length", "512"])
    assert whole.exit_code == 0 and "warning" not in whole.output
