"""`trajforge train`: fine-tune a model on an export (the recipe in recipes/train.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from trajforge.commands.common import fail


class TrainFormat(StrEnum):
    sft = "sft"
    dpo = "dpo"


def train(
    model: Annotated[
        str, typer.Option("--model", help="scratch, smollm2, a .gguf file or a saved model directory")
    ],
    out: Annotated[Path, typer.Option("--out", help="new folder for the trained model")],
    data: Annotated[
        Path | None, typer.Option("--data", help="folder of training shards (trajforge export)")
    ] = None,
    format: Annotated[TrainFormat, typer.Option("--format", help="sft (messages) or dpo")] = TrainFormat.sft,
    steps: Annotated[int, typer.Option(help="optimizer steps (0: write the starting model)")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per step")] = 4,
    learning_rate: Annotated[
        float | None, typer.Option(help="default: 3e-3 from scratch, 1e-5 for a pretrained model")
    ] = None,
    max_length: Annotated[int, typer.Option(min=16, help="tokens per row (longer rows are cut)")] = 2048,
    seed: Annotated[int, typer.Option(help="seed of the initial weights and data order")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (1 on a busy machine)")] = 1,
) -> None:
    """Fine-tune a model on an export with TRL (a recipe; needs the train extra)."""
    from trajforge.recipes.train import TrainError, TrainSettings
    from trajforge.recipes.train import train as run_training

    settings = TrainSettings(
        format.value,
        data,
        model,
        out,
        steps,
        batch_size,
        learning_rate,
        max_length,
        seed=seed,
        threads=threads,
    )
    try:
        result = run_training(settings)
    except TrainError as exc:
        raise fail(str(exc)) from None
    loss = f", loss {result.losses[0]} -> {result.losses[-1]}" if result.losses else ""
    if result.cut or result.dropped:
        typer.echo(
            f"warning: of {result.rows} rows, {result.cut} are longer than --max-length "
            f"{settings.max_length} tokens (their ends, the last turns, were not trained) and "
            f"{result.dropped} have a longer prompt (left out); raise --max-length",
            err=True,
        )
    typer.echo(
        f"trained {result.parameters:,} parameters for {result.steps} steps on {result.rows} rows in "
        f"{result.wall_s} s{loss}; use it as --policy hf:{result.out}"
    )
