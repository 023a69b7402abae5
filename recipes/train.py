"""`trajforge train`: fine-tune a model on an export with TRL, for a fixed number of steps.

A recipe, apart from the library (torchtune's habit): it reads training shards (any folder that
`datasets.load_dataset("parquet", data_dir=...)` reads: `trajforge export`'s layout or another),
starts from a model of `recipes.models`, runs TRL's SFTTrainer (`messages`) or DPOTrainer
(`prompt`/`chosen`/`rejected`, conversational), and writes a model directory that `hf:PATH`
policies and `trajforge serve-model` load. `--steps 0` writes the starting model untrained (with
a scratch model, its tokenizer trained on the data): the baseline of a comparison, or a GGUF
model converted into a directory.

The training stack is the `train` extra; it is imported only here.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trajforge.recipes.models import SCRATCH, ModelError, ScratchSize, is_scratch_template, load_start, save

FORMATS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}
RECORD = "trajforge-train.json"  # what was trained from what, beside the weights
EXTRA = "pip install 'trajforge[train]'"


class TrainError(ValueError):
    """A training run that cannot start (bad input or a missing extra); nothing was written."""


@dataclass
class TrainSettings:
    format: str
    data: Path | None  # None only to write a pretrained model as it is (steps 0)
    model: str
    out: Path
    steps: int = 200
    batch_size: int = 4
    learning_rate: float | None = None  # None: 3e-3 from scratch, 1e-5 for a pretrained model
    max_length: int = 2048
    beta: float = 0.1  # DPO
    seed: int = 0
    threads: int = 1  # under CPU contention 2 torch threads can be 100x slower than 1
    scratch: ScratchSize = field(default_factory=ScratchSize)


@dataclass
class TrainResult:
    out: Path
    rows: int
    steps: int
    parameters: int
    wall_s: float
    losses: list[float]
    cut: int = 0  # rows longer than max_length: TRL cuts their end, so their last turns go untrained
    dropped: int = 0  # DPO rows whose prompt alone fills max_length: TRL leaves them out


def check_extra() -> None:
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise TrainError(
            f"trajforge train needs the training stack ({exc.name} is missing): {EXTRA}"
        ) from None


def train(settings: TrainSettings) -> TrainResult:
    """Train and write `settings.out` whole (built in a temporary sibling, then renamed)."""
    s = settings
    if s.format not in FORMATS:
        raise TrainError(f"--format {s.format}: use one of {', '.join(FORMATS)}")
    if s.steps < 0:
        raise TrainError(f"--steps {s.steps}: use 0 (write the starting model) or more")
    out = s.out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(f"--out {s.out}: exists and is not empty; choose a new folder for the model")
    if s.data is None and (s.steps or s.model == SCRATCH):
        raise TrainError("--data: needed to train (and to build a scratch tokenizer); pass an export folder")
    check_extra()
    dataset = load_rows(s.data, s.format) if s.data is not None else []
    import torch

    torch.set_num_threads(max(1, s.threads))
    try:
        model, tokenizer = load_start(s.model, _texts(dataset, s.format), seed=s.seed, size=s.scratch)
    except ModelError as exc:
        raise TrainError(str(exc)) from None
    cut, dropped = too_long(dataset, tokenizer, s.format, s.max_length) if s.steps else (0, 0)
    if dropped and dropped == len(dataset):
        raise TrainError(
            f"--max-length {s.max_length}: every row's prompt is longer than that, so none would train; "
            "raise --max-length"
        )
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    start = time.monotonic()
    try:
        losses = _fit(s, model, tokenizer, dataset, tmp / ".work") if s.steps else []
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        save(model, tokenizer, tmp)
        wall_s = round(time.monotonic() - start, 1)
        result = TrainResult(out, len(dataset), s.steps, model.num_parameters(), wall_s, losses, cut, dropped)
        record = {**asdict(s), **asdict(result), "data": s.data and str(s.data), "out": str(out)}
        (tmp / RECORD).write_text(json.dumps(record, indent=1, default=str) + "\n")
        if out.exists():
            out.rmdir()  # checked empty above: nothing of the user's is deleted
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def load_rows(data: Path, fmt: str) -> Any:
    """The `train` split of the shards under `data` (or `data/data`), with the format's columns."""
    import datasets

    folder = Path(data).expanduser()
    root = folder / "data" if (folder / "data").is_dir() else folder
    if not root.is_dir() or not any(root.rglob("*.parquet")):
        raise TrainError(
            f"--data {data}: no Parquet shards there; export some first, e.g. "
            f"trajforge export --format {fmt} --dest {data}"
        )
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset("parquet", data_dir=str(root))
    except (ValueError, OSError) as exc:
        raise TrainError(f"--data {data}: cannot read its shards: {exc}") from exc
    if "train" not in loaded:
        raise TrainError(f"--data {data}: no train split (found {', '.join(loaded)}); export a train split")
    rows = loaded["train"]
    missing = [c for c in FORMATS[fmt] if c not in rows.column_names]
    if missing:
        raise TrainError(
            f"--data {data}: --format {fmt} needs the columns {', '.join(FORMATS[fmt])}; "
            f"{', '.join(missing)} missing (it has {', '.join(rows.column_names)}); "
            f"export with --format {fmt}"
        )
    if len(rows) == 0:
        raise TrainError(f"--data {data}: the train split has no rows; export a lake with successes")
    return rows.select_columns(list(FORMATS[fmt]))


def too_long(rows: Any, tokenizer: Any, fmt: str, max_length: int) -> tuple[int, int]:
    """(cut, dropped): rows whose chat-templated tokens exceed `max_length`, and DPO rows whose
    prompt alone reaches it. TRL silently cuts the first at their end (a conversation loses its
    last turns, often the ones that win the task) and drops the second."""

    def tokens(messages: list[dict], prompt: bool = False) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    cut = dropped = 0
    for row in rows:
        if fmt == "sft":
            cut += tokens(row["messages"]) > max_length
        elif tokens(row["prompt"], prompt=True) >= max_length:
            dropped += 1
        else:
            cut += max(tokens(row["prompt"] + row[side]) for side in ("chosen", "rejected")) > max_length
    return cut, dropped


def _texts(rows: Any, fmt: str) -> Iterator[str]:
    """Every message's content: what a scratch tokenizer is trained on."""
    for row in rows:
        for column in FORMATS[fmt]:
            value = row[column]
            for message in value if isinstance(value, list) else [{"content": value}]:
                yield str(message["content"] if isinstance(message, dict) else message)


def _fit(s: TrainSettings, model: Any, tokenizer: Any, rows: Any, work: Path) -> list[float]:
    import torch

    common = {
        "output_dir": str(work),
        "max_steps": s.steps,
        "per_device_train_batch_size": s.batch_size,
        "learning_rate": s.learning_rate or (3e-3 if s.model == SCRATCH else 1e-5),
        "lr_scheduler_type": "cosine",
        "warmup_steps": min(20, s.steps // 10),
        "logging_steps": max(1, s.steps // 20),
        "save_strategy": "no",
        "report_to": "none",
        "seed": s.seed,
        "max_length": s.max_length,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    if s.format == "sft":
        from trl import SFTConfig, SFTTrainer

        # Loss on the assistant turns only: a scratch template carries the {% generation %}
        # markers, TRL patches the templates it knows; any other template trains on every token.
        assistant_only = is_scratch_template(tokenizer) or _trl_knows(tokenizer)
        args = SFTConfig(**common, assistant_only_loss=assistant_only)
        trainer: Any = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    else:
        import copy

        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=s.beta)
        reference = copy.deepcopy(model).eval()  # a model built in memory needs its reference given
        trainer = DPOTrainer(
            model=model, ref_model=reference, args=args, train_dataset=rows, processing_class=tokenizer
        )
    trainer.train()
    return [round(float(e["loss"]), 4) for e in trainer.state.log_history if "loss" in e]


def _trl_knows(tokenizer: Any) -> bool:
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except (ValueError, NotImplementedError):
        return False
    return True
