"""`trajforge serve-model`: a model behind the OpenAI-compatible API."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from trajforge.commands.common import fail


class Engine(StrEnum):
    auto = "auto"
    vllm = "vllm"
    transformers = "transformers"


def serve_model(
    model: Annotated[Path | None, typer.Option("--model", help="a saved model directory")] = None,
    engine: Annotated[
        Engine, typer.Option(help="vllm where vLLM and a GPU exist; else transformers")
    ] = Engine.auto,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    name: Annotated[
        str | None, typer.Option(help="served model name (default: the directory's name)")
    ] = None,
    tiny: Annotated[
        Path | None,
        typer.Option("--tiny", help="build a tiny random model in this folder and serve it (tests)"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TRAJFORGE_SERVE_API_KEY",
            show_envvar=True,
            help="require this bearer key on /v1 (as `vllm serve --api-key`)",
        ),
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            "--max-model-len",
            min=1,
            help="context window in tokens, prompt and completion (default: the model config's)",
        ),
    ] = None,
) -> None:
    """Serve a model over the OpenAI-compatible API (chat, completions, logprobs, choices)."""
    if (model is None) == (tiny is None):
        raise fail("serve-model: pass exactly one of --model PATH or --tiny DIR")
    from trajforge.inference.serve import serve_model as serve

    if tiny is not None:
        from trajforge.inference.tiny import build_tiny_model

        model = build_tiny_model(tiny)
    typer.echo(f"serving {name or Path(str(model)).name} at http://{host}:{port}/v1", err=True)
    try:
        serve(
            model,
            host=host,
            port=port,
            name=name,
            engine=engine.value,
            api_key=api_key,
            max_model_len=max_model_len,
        )
    except (ValueError, OSError) as exc:
        raise fail(f"serve-model: {exc}") from None
