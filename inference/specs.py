"""Model SPECs (`openai:URL[#model]`, `hf:PATH`, `vllm:PATH`; `random` and `oracle` name the
policies that need no model): their one grammar (`parse_spec`), the options of a model client
(`ClientSettings`, `ClientOptions`), dependable clients for them, and the fingerprint of the
model a SPEC names (part of the run id and of every cache key)."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from trajforge.schemas.errors import ConfigError

if TYPE_CHECKING:
    from trajforge.inference.client import Backend
    from trajforge.inference.reliability import ReliableClient

MODEL_KINDS = ("openai", "hf", "vllm")
_URL = re.compile(r"^https?://[^/\s]+")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed SPEC: `kind` is one of MODEL_KINDS, or the SPEC itself for a policy that needs no
    model; `target` the server URL (openai:) or the model directory (hf:, vllm:); `model` the
    served name after `#` (openai:)."""

    text: str
    kind: str
    target: str = ""
    model: str | None = None

    @property
    def needs_model(self) -> bool:
        return self.kind in MODEL_KINDS

    def check_present(self, field: str) -> None:
        """A local model (hf:, vllm:) is a directory on this machine: nothing is downloaded."""
        if self.kind in ("hf", "vllm") and not Path(self.target).expanduser().is_dir():
            raise ConfigError(
                f"{field}: {self.text!r}: no model directory at {self.target}; pass {self.kind}:PATH "
                "of a saved model"
            )


def parse_spec(text: str, field: str = "policies", builtin: Collection[str] = ()) -> ModelSpec:
    """The SPEC's form (a server is reached, a directory looked at, only when the run starts);
    `builtin` names the policies that need no model (none: the SPEC must name a model). A
    ConfigError names `field` (`policies`, `judge`), the value and the forms it may take."""
    kind, _, rest = text.partition(":")
    if text in builtin:
        return ModelSpec(text, text)
    if kind == "openai":
        url, _, model = rest.partition("#")
        if not _URL.match(url):
            raise ConfigError(
                f"{field}: {text!r} needs a server URL after 'openai:', e.g. "
                "openai:http://127.0.0.1:8000/v1#my-model (start one with `trajforge serve-model PATH`)"
            )
        return ModelSpec(text, kind, url, model or None)
    if kind in ("hf", "vllm"):
        if not rest:
            raise ConfigError(
                f"{field}: {text!r} needs a local model directory after '{kind}:', e.g. {kind}:./models/tiny"
            )
        return ModelSpec(text, kind, rest)
    forms = "openai:URL[#model], hf:PATH or vllm:PATH"
    if not builtin:
        raise ConfigError(f"{field}: {text!r} is not a model spec; use {forms}")
    raise ConfigError(f"{field}: unknown policy {text!r}; use {', '.join(sorted(builtin))}, {forms}")


class ClientSettings(BaseModel):
    """How a client calls its model, as a user sets it: the one declaration of these options,
    which the run config's `model:` section takes as its own (flows/run_config.py's ModelConfig)."""

    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(60.0, gt=0, description="per request")
    price_in_per_m: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    price_out_per_m: float = Field(0.0, ge=0, description="USD per million completion tokens")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable that holds the API key of openai: servers "
        "(default: OPENAI_API_KEY when it is set); the key itself never goes in a config",
    )
    revision: str | None = Field(
        None,
        min_length=1,
        description="the served model's version (openai:): changing it changes the run id and misses "
        "the request cache, as new weights do for hf:/vllm:",
    )


class ClientOptions(ClientSettings):
    """A client's settings plus where its request cache lives (the run's output folder, not a
    user's setting). `api_key_env`'s key is read where requests are sent, so it never travels
    with the client."""

    model_config = ConfigDict(frozen=True)
    cache_dir: str | Path | None = None  # the on-disk request cache; none: no cache

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[ClientOptions, dict[str, Any]]:
        """The client's options out of a run's model options, and the rest (a policy's
        temperature, max_tokens, ...)."""
        mine = {k: v for k, v in options.items() if k in cls.model_fields}
        return cls(**mine), {k: v for k, v in options.items() if k not in cls.model_fields}


def reliable_client(
    spec: str, options: ClientOptions | None = None, field: str = "policies"
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """The backend a SPEC names behind the reliability layer, and what gives back what it holds
    (vllm: its share of the machine's server); a malformed SPEC is a ConfigError naming `field`."""
    from trajforge.inference.reliability import ReliableClient, UsageMeter

    options = options or ClientOptions()
    parsed = parse_spec(spec, field)
    on_close = None
    if parsed.kind == "openai":
        backend: Backend = _openai_backend(parsed, options.api_key_env)
    elif parsed.kind == "hf":
        backend = _hf_backend(parsed)
    else:
        backend, on_close = _vllm_backend(parsed)
    client = ReliableClient(
        backend,
        cache=options.cache_dir,
        timeout_s=options.timeout_s,
        meter=UsageMeter(options.price_in_per_m, options.price_out_per_m),
        probe=parsed.kind != "hf",  # a server can hang while it answers /v1/models; a local model cannot
        fingerprint=model_fingerprint(spec, options.revision),
    )
    return client, on_close


def client_from_options(
    spec: str, options: Mapping[str, Any], field: str = "judge"
) -> tuple[ReliableClient, Callable[[], None] | None]:
    """`reliable_client` from the run's model options (those that are not the client's, such
    as a policy's temperature, are left out); the judge's and the critic's way in."""
    return reliable_client(spec, ClientOptions.split(options)[0], field)


def _openai_backend(spec: ModelSpec, api_key_env: str | None) -> Backend:
    from trajforge.inference.client import OpenAIHTTPBackend

    return OpenAIHTTPBackend(spec.target, spec.model, api_key_env=api_key_env)


def _hf_backend(spec: ModelSpec) -> Backend:
    from trajforge.inference.local import LocalBackend

    if not (Path(spec.target) / "config.json").is_file():
        raise ConfigError(
            f"policy: {spec.text!r} needs a local model directory after 'hf:' (one with config.json, as "
            "save_pretrained writes it), e.g. hf:./models/tiny; nothing is downloaded from a hub"
        )
    return LocalBackend(spec.target)


def _vllm_backend(spec: ModelSpec) -> tuple[Backend, Callable[[], None]]:
    from trajforge.inference.client import OpenAIHTTPBackend
    from trajforge.inference.shared_server import shared_server

    rest = spec.target
    if not (Path(rest) / "config.json").is_file():
        raise ConfigError(
            f"policy: {spec.text!r} needs a local model directory after 'vllm:', e.g. vllm:./models/qwen"
        )
    try:
        server = shared_server(rest, engine="vllm")  # one per model per machine, whoever asks
    except ConfigError as exc:
        raise ConfigError(f"policy: {spec.text!r}: {exc}; or use hf:{rest} on CPU") from exc
    return OpenAIHTTPBackend(server.url, server.name), server.stop


# -- fingerprints -----------------------------------------------------------------------------------
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
EDGE_BYTES = 1 << 20  # of a weights file, its first and last MB are hashed (with its size)

_FILE_HASHES: dict[tuple, str] = {}
_FILE_HASHES_LOCK = threading.Lock()


def model_fingerprint(spec: str, revision: str | None = None) -> str:
    """What identifies the model behind a SPEC, "" when nothing does (random, oracle, or an
    openai: server without `model.revision`): for hf:/vllm: a hash of the model directory's
    files (see `weights_fingerprint`), for openai: the user's revision. A revision given for a
    local model is folded in too."""
    kind, _, rest = spec.partition(":")
    parts = []
    if kind in ("hf", "vllm") and Path(rest).is_dir():
        parts.append(weights_fingerprint(rest))
    if revision and kind in ("hf", "vllm", "openai"):
        parts.append(f"revision={revision}")
    return "+".join(parts)


def weights_fingerprint(directory: str | Path) -> str:
    """sha256 over every file of a model directory (its path inside the directory and size; the
    whole content of config, tokenizer and other small files; the first and last MB of weights
    files and anything over 2 MB). Not mtimes: a copied model keeps its fingerprint. Memoised
    per file by (size, mtime, inode), so asking again costs a stat per file."""
    root = Path(directory).resolve()
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{_file_hash(path)}\0".encode())
    return digest.hexdigest()[:16]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _FILE_HASHES_LOCK:
        if memo in _FILE_HASHES:
            return _FILE_HASHES[memo]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as fh:
        if st.st_size <= 2 * EDGE_BYTES and not path.name.endswith(WEIGHT_SUFFIXES):
            h.update(fh.read())
        else:
            h.update(fh.read(EDGE_BYTES))
            fh.seek(max(0, st.st_size - EDGE_BYTES), os.SEEK_SET)
            h.update(fh.read(EDGE_BYTES))
    value = h.hexdigest()
    with _FILE_HASHES_LOCK:
        _FILE_HASHES[memo] = value
    return value
