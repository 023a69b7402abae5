from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from trajforge.store.export import MARKER, ExportError, export_sft
from trajforge.store.lake import Lake


@pytest.fixture
def lake(out, make):
    with Lake.open(out) as lake:
        trajectories = [make.trajectory(i, success=i % 2 == 0, steps=2 + i % 3) for i in range(6)]
        lake.commit(make.batch(trajectories), make.run_row())
    with Lake.open(out, read_only=True) as lake:
        yield lake


def test_export_writes_one_shard_of_successful_conversations(lake, tmp_path):
    dest = tmp_path / "sft"
    result = export_sft(lake, dest)
    shard = dest / "data" / "train-00000-of-00001.parquet"
    assert result.rows == 3
    assert result.shards == [shard]
    assert sorted(p.name for p in dest.rglob("*")) == [MARKER, "README.md", "data", shard.name]
    marker = json.loads((dest / MARKER).read_text())
    assert marker["format"] == "sft" and marker["rows"] == 3 and marker["snapshot_id"] == lake.snapshot_id()
    table = pq.read_table(shard)
    assert table.column_names[:2] == ["messages", "trajectory_id"]
    # ordered by task, then id: task-0, task-1, task-2
    assert table.column("trajectory_id").to_pylist() == ["traj-0000", "traj-0004", "traj-0002"]
    for row in table.to_pylist():
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "system"
        assert roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2)
    first = table.slice(0, 1).to_pylist()[0]["messages"]
    assert first[1]["content"].startswith("Task: reach cell 0\n\nobs 0.0")
    assert first[2]["content"] == "Thought: go on\nAction: move 0"


def test_export_shards_and_filter(lake, tmp_path):
    result = export_sft(lake, tmp_path / "sft", max_rows_per_shard=1, split="test")
    assert [p.name for p in result.shards] == [f"test-0000{i}-of-00003.parquet" for i in range(3)]
    filtered = export_sft(lake, tmp_path / "few", where="num_steps >= 3")
    assert filtered.rows == 2


def test_export_replaces_only_an_earlier_export(lake, tmp_path):
    dest = tmp_path / "sft"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="holds no trajforge export"):
            export_sft(lake, dest, overwrite=overwrite)
    assert (dest / "keep.txt").read_text() == "mine"
    earlier = tmp_path / "earlier"
    export_sft(lake, earlier, where="num_steps >= 3")
    with pytest.raises(ExportError, match="earlier export: pass --overwrite"):
        export_sft(lake, earlier)
    result = export_sft(lake, earlier, overwrite=True)
    assert result.rows == 3 and json.loads((earlier / MARKER).read_text())["rows"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "out", "sft"]  # no temporary dirs


def test_export_filter_cannot_write(lake, tmp_path):
    sneaky = "true) ORDER BY 1; DELETE FROM trajectories; SELECT * FROM trajectories WHERE (true"
    with pytest.raises(ExportError, match="--where .*one condition"):
        export_sft(lake, tmp_path / "sft", where=sneaky)
    with pytest.raises(ExportError, match="--where .*one condition"):
        export_sft(lake, tmp_path / "sft", where="true; DELETE FROM trajectories")
    assert lake.sql("SELECT count(*) AS n FROM trajectories").column("n")[0].as_py() == 6
    assert not (tmp_path / "sft").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]


def test_export_with_no_rows_writes_one_empty_shard(lake, tmp_path):
    result = export_sft(lake, tmp_path / "sft", where="false")
    assert result.rows == 0
    assert [p.name for p in result.shards] == ["train-00000-of-00001.parquet"]
    assert pq.read_table(result.shards[0]).num_rows == 0
