"""SFT exports of a real shop-api lake (tool-call actions): each style writes the calls in its
trainer's shape with the environment's tools, the shards load with `datasets`, and TRL renders
them with the tools through a chat template that reads tools and dict arguments."""

from __future__ import annotations

import json

import pytest

from trajforge.store.export import ExportSpec, export
from trajforge.store.export.checks import check_openai_chat, check_trl, sharegpt_align
from trajforge.store.lake import Lake

datasets = pytest.importorskip("datasets")
data_utils = pytest.importorskip("trl.data_utils")


@pytest.fixture(scope="module")
def shop(tmp_path_factory, rollout_lake):
    """A lake of the oracle on two shop-api tasks (and the declared tools)."""
    from trajforge.environments.webapp.api import ShopApiEnvironment
    from trajforge.synthesizers.policies import OraclePolicy

    env = ShopApiEnvironment()
    try:
        out = rollout_lake(tmp_path_factory.mktemp("shop") / "out", env, OraclePolicy(), env.task_specs(2, 0))
    finally:
        getattr(env, "close", lambda: None)()
    with Lake.open(out, read_only=True) as lake:
        steps = lake.sql(
            "SELECT steps, tools FROM trajectories WHERE success ORDER BY trajectory_id"
        ).to_pylist()
        yield lake, steps, env.tools


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny model's tokenizer with a template that renders the tools and reads each call's
    arguments as a dict (a string there fails)."""
    from transformers import AutoTokenizer

    from trajforge.inference.tiny import build_tiny_model

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny")))
    tok.chat_template = (
        "{% if tools %}<|tools|>{% for t in tools %}[{{ t['function']['name'] }}]{% endfor %}"
        "<|end|>\n{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}<call>{{ c['function']['name'] }}"
        "{% for k, v in c['function']['arguments'].items() %} {{ k }}={{ v }}{% endfor %}</call>{% endfor %}"
        "<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tok


def test_shop_lake_holds_tool_calls(shop):
    _, trajectories, tools = shop
    assert len(trajectories) == 2 and all(json.loads(t["tools"]) == tools for t in trajectories)
    assert all(s["tool_name"] for t in trajectories for s in t["steps"])


def test_trl_sft_carries_the_calls_and_tools_through_trls_template(shop, tokenizer, tmp_path):
    lake, trajectories, tools = shop
    result = export(lake, tmp_path / "trl", ExportSpec())  # no --tool-calls: the lake's calls decide
    rows = list(datasets.load_dataset("parquet", data_dir=str(tmp_path / "trl" / "data"))["train"])
    assert result.rows == len(rows) == 2
    for row, lake_row in zip(sorted(rows, key=lambda r: r["trajectory_id"]), trajectories, strict=True):
        assert check_trl({"messages": row["messages"]}) is None
        assert json.loads(row["tools"]) == tools
        calls = [m["tool_calls"][0] for m in row["messages"] if m.get("tool_calls")]
        steps = lake_row["steps"]
        assert [c["function"]["name"] for c in calls] == [s["tool_name"] for s in steps]
        assert [c["function"]["arguments"] for c in calls] == [json.loads(s["tool_arguments"]) for s in steps]
        answers = [m for m in row["messages"] if m["role"] == "tool"]
        assert [a["tool_call_id"] for a in answers] == [c["id"] for c in calls[:-1]]
        assert [a["content"] for a in answers] == [s["tool_result"] for s in steps[:-1]]
        text = data_utils.apply_chat_template(
            {"messages": row["messages"]}, tokenizer, tools=json.loads(row["tools"])
        )["text"]
        assert all(f"[{t['function']['name']}]" in text for t in tools)
        first = steps[0]
        arg, value = next(iter(json.loads(first["tool_arguments"]).items()))
        assert f"<call>{first['tool_name']} {arg}={value}" in text


def test_sharegpt_and_openai_sft_write_their_tool_shapes(shop, tmp_path):
    lake, trajectories, tools = shop
    export(lake, tmp_path / "sg", ExportSpec(style="sharegpt"))
    rows = list(datasets.load_dataset("parquet", data_dir=str(tmp_path / "sg" / "data"))["train"])
    assert len(rows) == 2
    info = json.loads((tmp_path / "sg" / "dataset_info.json").read_text())
    assert all(
        e["columns"]["tools"] == "tools" and e["tags"]["function_tag"] == "function_call"
        for e in info.values()
    )
    for row in rows:
        assert json.loads(row["tools"]) == tools
        prompt_response = sharegpt_align(row)
        assert not isinstance(prompt_response, str), prompt_response  # LLaMA-Factory keeps the row
        kinds = [t["from"] for t in row["conversations"]]
        assert kinds[0] == "human" and kinds[-1] == "function_call"
        assert kinds[1:] == ["function_call", "observation"] * (len(kinds) // 2 - 1) + ["function_call"]
        call = json.loads(row["conversations"][1]["value"])
        assert (
            isinstance(call["arguments"], dict) and call["name"] == trajectories[0]["steps"][0]["tool_name"]
        )

    export(lake, tmp_path / "oa", ExportSpec(style="openai"))
    lines = [json.loads(x) for p in sorted((tmp_path / "oa" / "data").glob("*.jsonl")) for x in p.open()]
    assert len(lines) == 2
    for line in lines:
        assert check_openai_chat(line) is None and line["tools"] == tools
        calls = [m["tool_calls"][0] for m in line["messages"] if m.get("tool_calls")]
        assert calls and all(isinstance(c["function"]["arguments"], str) for c in calls)
        assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
        ids = [m["tool_call_id"] for m in line["messages"] if m["role"] == "tool"]
        assert ids == [c["id"] for c in calls[:-1]]
    assert len(datasets.load_dataset("json", data_dir=str(tmp_path / "oa" / "data"))["train"]) == 2
