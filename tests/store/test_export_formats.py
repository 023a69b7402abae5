"""Every format and style of `export` on a lake of a small toy MCTS run: the shards load with
`datasets`, pass the reader's own rules (TRL's data utilities, LLaMA-Factory's alternation,
OpenAI's checks), keep tasks within one split, and come out byte for byte the same twice."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajforge.store.export import ExportError, ExportSpec, export, list_exports
from trajforge.store.export.checks import (
    check_openai_chat,
    check_openai_dpo,
    check_prm,
    check_trl,
    sharegpt_align,
)
from trajforge.store.lake import Lake

datasets = pytest.importorskip("datasets")
data_utils = pytest.importorskip("trl.data_utils")

TEMPLATE_THOUGHT = "Following the known solution."


@pytest.fixture(scope="module")
def lake(toy_lake):
    with Lake.open(toy_lake, read_only=True) as lake:
        yield lake


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny model's tokenizer with a template that reads tool-call arguments as a dict (as
    Qwen's and Llama 3.1's do): a string there fails the test."""
    from transformers import AutoTokenizer

    from trajforge.inference.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}{% for k, v in c['function']['arguments'].items() %}"
        "{{ c['function']['name'] }}({{ k }}={{ v }}){% endfor %}{% endfor %}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tok


def load(dest: Path, loader: str = "parquet") -> dict:
    return datasets.load_dataset(loader, data_dir=str(dest / "data"))


def run(lake, dest: Path, **kw) -> tuple:
    result = export(lake, dest, ExportSpec(**kw))
    return result, load(dest, "json" if kw.get("style") == "openai" else "parquet")


def count(lake, query: str) -> int:
    return lake.sql(query).column(0)[0].as_py()


@pytest.mark.parametrize("tool_calls", [False, True])
def test_trl_sft_rows_pass_trl_and_carry_no_template_thought(lake, tokenizer, tmp_path, tool_calls):
    result, ds = run(lake, tmp_path / "sft", tool_calls=tool_calls)
    successes = count(lake, "SELECT count(*) FROM trajectories WHERE success")
    assert result.rows == ds["train"].num_rows == successes > 0
    for row in ds["train"]:
        example = {"messages": row["messages"]}
        assert check_trl(example) is None
        tools = json.loads(row["tools"]) if tool_calls else None
        text = data_utils.apply_chat_template(example, tokenizer, tools=tools)["text"]
        assert TEMPLATE_THOUGHT not in text
    # The template policy's steps come out bare; a thought no message carries is not invented.
    template = [r for r in ds["train"] if r["policy"] == "template"]
    assert len(template) == 2
    if tool_calls:
        shard = pq.read_schema(next((tmp_path / "sft" / "data").glob("*.parquet")))
        assert shard.field("messages").type == pa.list_(pa.json_(pa.string()))
        calls = [m for m in template[0]["messages"] if m.get("tool_calls")]
        assert calls[0]["tool_calls"][0]["function"]["arguments"] == {"action": "move 0"}
        assert calls[0]["content"] == ""
        tool = template[0]["messages"][3]
        assert tool["role"] == "tool" and tool["tool_call_id"] == calls[0]["tool_calls"][0]["id"]
        assert all(set(m) == {"role", "content"} for m in template[0]["messages"][:2])  # no null keys
    else:
        assert [m["content"] for m in template[0]["messages"] if m["role"] == "assistant"] == [
            "move 0",
            "move 1",
            "move 2",
        ]


def test_trl_dpo_pairs_are_single_steps(lake, tokenizer, tmp_path):
    result, ds = run(lake, tmp_path / "dpo", format="dpo")
    rows = list(ds["train"])
    assert result.rows == len(rows) > 0
    sources = {r["source"] for r in rows}
    assert sources == {"mcts_sibling", "trajectory"}
    for row in rows:
        example = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        assert check_trl(example) is None
        assert len(row["chosen"]) == len(row["rejected"]) == 1 and row["chosen"] != row["rejected"]
        assert row["prompt"][-1]["role"] == "user"
        out = data_utils.apply_chat_template(example, tokenizer)
        assert out["chosen"] and out["rejected"] and out["prompt"].endswith("<|assistant|>\n")
    only_mcts = export(
        lake, tmp_path / "gap", ExportSpec(format="dpo", sources=("mcts_sibling",), min_gap=0.5)
    )
    gaps = load(tmp_path / "gap")["train"]
    assert only_mcts.rows == gaps.num_rows > 0
    assert all(r["q_chosen"] - r["q_rejected"] >= 0.5 and r["source"] == "mcts_sibling" for r in gaps)


def test_trl_kto_rows_are_unpaired_and_labelled_both_ways(lake, tokenizer, tmp_path):
    result, ds = run(lake, tmp_path / "kto", format="kto", tool_calls=True)
    rows = list(ds["train"])
    assert {r["label"] for r in rows} == {True, False}
    keys = {json.dumps([r["task_id"], r["prompt"], r["completion"], r["label"]]) for r in rows}
    assert len(keys) == len(rows)  # a chosen step shared by several sibling pairs comes out once
    for row in rows:
        example = {k: row[k] for k in ("prompt", "completion", "label")}
        assert check_trl(example) is None
        out = data_utils.apply_chat_template(example, tokenizer, tools=json.loads(row["tools"]))
        assert out["completion"] and out["label"] == row["label"]


def test_prm_rows_keep_step_values_and_label_them_by_threshold(lake, tmp_path):
    result, ds = run(lake, tmp_path / "prm", format="prm", threshold=0.9)
    rows = list(ds["train"])
    valued = count(
        lake, "SELECT count(*) FROM trajectories WHERE list_bool_and([s.value IS NOT NULL FOR s IN steps])"
    )
    assert result.rows == len(rows) == valued > 0
    lake_values = {
        r["trajectory_id"]: [s["value"] for s in r["steps"]]
        for r in lake.sql("SELECT trajectory_id, steps FROM trajectories").to_pylist()
    }
    for row in rows:
        assert check_prm({k: row[k] for k in ("prompt", "completions", "labels", "values")}) is None
        assert row["values"] == lake_values[row["trajectory_id"]]
        assert row["labels"] == [v >= 0.9 for v in row["values"]]
    assert any(not label for r in rows for label in r["labels"])
    assert check_prm({"prompt": "p", "completions": ["a", "b"], "labels": [True], "values": [1.0, 0.0]})


@pytest.mark.parametrize("fmt", ["sft", "dpo", "kto"])
def test_sharegpt_rows_come_out_of_llamafactorys_converter(lake, tmp_path, fmt):
    dest = tmp_path / fmt
    result, ds = run(lake, dest, format=fmt, style="sharegpt", tool_calls=fmt == "sft")
    trl = export(lake, tmp_path / f"trl-{fmt}", ExportSpec(format=fmt))
    assert result.rows == trl.rows == ds["train"].num_rows > 0  # no row lost to the style
    for row in ds["train"]:
        aligned = sharegpt_align(row, ranking=fmt == "dpo", kto=fmt == "kto")
        assert not isinstance(aligned, str), aligned
        prompt, response = aligned
        assert prompt and response and row["system"]
    info = json.loads((dest / "dataset_info.json").read_text())
    for entry in info.values():
        assert (dest / entry["file_name"]).is_file() and entry["formatting"] == "sharegpt"
        assert entry.get("ranking", False) is (fmt == "dpo")
    # The converter's rule itself: a row that breaks alternation or ends on an observation is skipped.
    turns = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
    assert sharegpt_align({"conversations": turns + turns[:1]}) == "sharegpt_message_count"
    assert sharegpt_align({"conversations": turns[::-1]}) == "sharegpt_alternation"


def test_openai_lines_pass_the_format_checks(lake, tmp_path):
    _, sft = run(lake, tmp_path / "sft", style="openai", tool_calls=True)
    lines = [json.loads(x) for p in sorted((tmp_path / "sft" / "data").glob("*.jsonl")) for x in p.open()]
    assert len(lines) == sft["train"].num_rows > 0
    for line in lines:
        assert check_openai_chat(line) is None
        call = line["messages"][2]["tool_calls"][0]
        assert isinstance(call["function"]["arguments"], str)  # a JSON string for OpenAI
        assert line["messages"][3]["tool_call_id"] == call["id"]
    _, dpo = run(lake, tmp_path / "dpo", format="dpo", style="openai")
    pairs = [json.loads(x) for p in (tmp_path / "dpo" / "data").glob("*.jsonl") for x in p.open()]
    assert len(pairs) == dpo["train"].num_rows > 0
    assert all(check_openai_dpo(p) is None for p in pairs)
    broken = json.loads(json.dumps(lines[0]))
    broken["messages"][3]["tool_call_id"] = "call_x"
    assert check_openai_chat(broken) == "tool_response_without_call"
    broken["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"action": "go"}
    assert check_openai_chat(broken) == "tool_call_arguments_not_json"
    assert (
        check_openai_chat({"messages": [{"role": "user", "content": "hi"}]})
        == "example_missing_assistant_message"
    )


def test_no_task_is_in_two_splits(lake, tmp_path):
    result, ds = run(lake, tmp_path / "sft", split={"train": 0.5, "validation": 0.25, "test": 0.25})
    tasks = {name: set(ds[name]["task_id"]) for name in ("train", "validation", "test")}
    assert all(tasks.values()) or sum(map(len, tasks.values())) == 8
    assert not (tasks["train"] & tasks["validation"] or tasks["train"] & tasks["test"])
    assert not tasks["validation"] & tasks["test"]
    assert sum(result.counts.values()) == result.rows
    card = (tmp_path / "sft" / "README.md").read_text()
    assert "split: validation" in card and "path: data/test-*.parquet" in card


def test_the_same_snapshot_exports_the_same_bytes(lake, tmp_path):
    spec = ExportSpec(format="dpo", split={"train": 0.8, "test": 0.2}, max_shard_rows=7)
    first, second = export(lake, tmp_path / "a", spec), export(lake, tmp_path / "b", spec)
    assert len(first.shards) > 2 and [p.name for p in first.shards] == [p.name for p in second.shards]
    for a, b in zip(first.shards, second.shards, strict=True):
        assert a.read_bytes() == b.read_bytes()
    card_a = (tmp_path / "a" / "README.md").read_text().replace(str(tmp_path / "a"), "DEST")
    assert card_a == (tmp_path / "b" / "README.md").read_text().replace(str(tmp_path / "b"), "DEST")
    assert f"lake snapshot: {lake.snapshot_id()}" in card_a and f"config hash: {first.config_hash}" in card_a


def test_a_big_lake_is_read_in_passes_of_whole_tasks_in_a_fixed_order(lake, tmp_path, monkeypatch):
    from trajforge.store.export import query

    whole = export(lake, tmp_path / "one", ExportSpec(format="kto"))
    monkeypatch.setattr(query, "PASS_BYTES", 2_000)  # many passes over this small lake
    assert len(query.ordered_queries(lake, query.format_query("kto"))) > 3
    first, second = (
        export(lake, tmp_path / "a", ExportSpec(format="kto")),
        export(lake, tmp_path / "b", ExportSpec(format="kto")),
    )
    assert first.rows == whole.rows and first.shards[0].read_bytes() == second.shards[0].read_bytes()
    tasks = load(tmp_path / "a")["train"]["task_id"]
    runs = [t for i, t in enumerate(tasks) if i == 0 or tasks[i - 1] != t]
    assert len(runs) == len(set(tasks))  # each task's rows together: duplicates are found per task


def test_exports_are_recorded(lake, toy_lake, tmp_path):
    dest = tmp_path / "sft"
    export(lake, dest, ExportSpec(where="env = 'toy'"))
    export(lake, dest, ExportSpec(format="prm"), overwrite=True)
    mine = [r for r in list_exports(toy_lake) if r["dest"] == str(dest.resolve())]
    assert [(r["format"], r["where"], r["status"]) for r in mine] == [
        ("sft", "env = 'toy'", "replaced"),
        ("prm", None, "present"),
    ]
    assert mine[0]["snapshot_id"] == lake.snapshot_id()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ExportSpec(format="kto", style="openai"), "the openai style writes sft, dpo"),
        (ExportSpec(format="prm", style="sharegpt"), "for prm use --style trl"),
        (ExportSpec(format="sft", min_gap=0.1), "--sources and --min-gap"),
        (ExportSpec(max_shard_rows=0), "--max-shard-rows 0"),
    ],
)
def test_impossible_exports_are_refused_before_writing(lake, tmp_path, spec, message):
    with pytest.raises(ExportError, match=message):
        export(lake, tmp_path / "x", spec)
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
