"""The dataset card (README.md with its YAML header) and LLaMA-Factory's dataset_info.json.

The card holds no time of day: the same snapshot exported twice gives the same bytes. It has no
`dataset_info.features` block (that block silently overrides the Parquet types when loading);
the types are the shards' own.
"""

from __future__ import annotations

from typing import Any

import yaml

from trajforge.store.export.styles import SHAREGPT_TAGS

_WHAT = {
    "sft": "successful trajectories as conversations (system, then observation/action turns)",
    "dpo": (
        "single-step preference pairs: MCTS sibling pairs as they are (prompt = the conversation so "
        "far, chosen/rejected = one assistant turn each), success/failure trajectory pairs cut at "
        "their first differing turn"
    ),
    "kto": (
        "unpaired completions: each side of a sibling pair (one step) and of a trajectory pair (the "
        "rest of the episode), labelled desirable or not"
    ),
    "prm": (
        "stepwise process supervision: `prompt`, one `completions` entry per step (the observation "
        "that step saw, then its action), `labels` (step value >= threshold) and the `values` "
        "themselves. TRL removed its PRMTrainer after 1.13; nothing in TRL >= 1.14 checks this "
        "shape, so trajforge checks it itself (one bool label and a finite value per step)"
    ),
}

_LOAD = {
    "trl": """```python
from datasets import load_dataset
ds = load_dataset("parquet", data_dir="{dest}/data")  # or load_dataset("{dest}")
```""",
    "sharegpt": """LLaMA-Factory: set `dataset_dir: {dest}` and `dataset: {names}`
(entries of dataset_info.json).
```python
from datasets import load_dataset
ds = load_dataset("parquet", data_dir="{dest}/data")
```""",
    "openai": """Upload a shard as the training (or validation) file of an OpenAI fine-tuning job
(`method: {method}`), or read it with:
```python
from datasets import load_dataset
ds = load_dataset("json", data_dir="{dest}/data")
```""",
}


def card(meta: dict[str, Any], shards: dict[str, list[tuple[str, int]]], dest: str) -> str:
    """README.md: YAML header (configs with data_files per split, licence, tags), then the text."""
    suffix = "jsonl" if meta["style"] == "openai" else "parquet"
    header = {
        "license": meta["license"],
        "pretty_name": f"trajforge {meta['format']} ({meta['style']})",
        "tags": ["trajforge", "agents", meta["format"]],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.{suffix}"} for s in shards],
            }
        ],
    }
    counts = "\n".join(f"| {s} | {len(files)} | {sum(n for _, n in files)} |" for s, files in shards.items())
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(meta["dropped"].items())) or "none"
    sources = ", ".join(f"{k}: {v}" for k, v in sorted(meta["sources"].items())) or "none"
    names = ",".join(dataset_info_names(meta, shards))
    method = "dpo" if meta["format"] == "dpo" else "supervised"
    load = _LOAD[meta["style"]].format(dest=dest, names=names, method=method)
    body = f"""# trajforge {meta["format"]} export ({meta["style"]} style)

Training data manufactured by trajforge: {_WHAT[meta["format"]]}.

| split | shards | rows |
|---|---|---|
{counts}

- lake snapshot: {meta["snapshot_id"]} (read with `trajforge sql --snapshot {meta["snapshot_id"]}`)
- filter: {meta["where"] or "none"}
- rows by pair source (dpo, kto) or policy (sft, prm): {sources}
- rows left out, by reason: {dropped}
- options: {_options(meta)}
- config hash: {meta["config_hash"]} (trajforge {meta["code_version"]})
- splits are assigned by a hash of the task id: no task is in two splits
- thoughts a policy gave word for word on every step (a template, not reasoning) are left out

## How to load

{load}
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body


def _options(meta: dict[str, Any]) -> str:
    keys = ("split", "tool_calls", "min_gap", "sources_filter", "threshold", "max_shard_rows")
    return ", ".join(f"{k}={meta[k]}" for k in keys if meta.get(k) not in (None, [], ()))


def dataset_info_names(meta: dict[str, Any], shards: dict[str, list[tuple[str, int]]]) -> list[str]:
    if meta["style"] != "sharegpt":
        return []
    return list(dataset_info(meta, shards))


def dataset_info(meta: dict[str, Any], shards: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json: one entry per shard (its `file_name` is one file or a
    folder, and a folder would mix the splits); combine a split's with `dataset: a,b`."""
    fmt = meta["format"]
    columns: dict[str, str] = {"messages": "conversations", "system": "system", "tools": "tools"}
    entry: dict[str, Any] = {"formatting": "sharegpt"}
    if fmt == "dpo":
        entry["ranking"] = True
        columns.update(chosen="chosen", rejected="rejected")
    if fmt == "kto":
        columns["kto_tag"] = "label"
    entry.update(columns=columns, tags=dict(SHAREGPT_TAGS))
    out = {}
    for split, files in shards.items():
        for i, (path, _) in enumerate(files):
            suffix = "" if len(files) == 1 else f"_{i:05d}"
            out[f"trajforge_{fmt}_{split}{suffix}"] = {"file_name": path, **entry}
    return out
