"""A tiny model built in a temporary directory and served on loopback, once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trajforge.inference.serve import ServerHandle, start_server
from trajforge.inference.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_server(tiny_model) -> Iterator[ServerHandle]:
    with start_server(tiny_model, engine="transformers") as server:
        yield server
