"""A tiny random Llama model built locally in under a second: tests and `serve-model --tiny` use it
because nothing can be downloaded from a model hub here. Its outputs are noise; its shapes,
tokenizer, chat template and files are those of a real model."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from trajforge.schemas.conversation import SYSTEM_PROMPT

SPECIAL_TOKENS = ["<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]

# The role marker and content are rendered verbatim, so `continue_final_message` can cut after
# an assistant prefix exactly where the model should go on.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    SYSTEM_PROMPT.format(env="toy"),
    "Task: Take the key and open the door at the end of the corridor (room 4).",
    "You are in room 0 of 4. A key lies here. You carry a key. A locked door is here.",
    "Thought: The key is here, so I take it first.\nAction: take key",
    "Thought: The door is to the east.\nAction: go east",
    "Thought: I went too far.\nAction: go west",
    "Thought: I have the key and the door is here.\nAction: open door",
    "The door opens. You win! That is not something you can do here.",
    "Admissible actions: go east, go west, take key, open door, look, inventory, examine, north, south.",
    "Reply with exactly one admissible action after 'Action:'. Click the button, type the text, submit.",
    "0123456789 {}[]():;,.!?'\"-_/\\ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_tiny_model(directory: str | Path, *, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tokenizer (byte-level BPE with a chat template) and a random 2-layer Llama to
    `directory`, loadable with `AutoTokenizer`/`AutoModelForCausalLM` offline. Deterministic."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(_CORPUS * 4, vocab_size)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 writes the template to chat_template.jinja and names its own tokenizer
    class; older loaders (a vLLM host may pin transformers 4.x) read both from here."""
    config = json.loads(path.read_text())
    config.update(chat_template=CHAT_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast")
    path.write_text(json.dumps(config, indent=2))


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained on `texts`, with the tiny model's special tokens and
    `chat_template` (a PreTrainedTokenizerFast; tokenizers and transformers imported lazily)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=chat_template,
    )
