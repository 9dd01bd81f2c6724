"""Tiny causal language models and a byte-level tokenizer, built from a config with no model hub.

The demo, the tests and the CPU benchmarks need a real transformers model that trains in seconds;
production loads real weights from a path on the model volume instead. ``build_tiny_model`` writes
a directory that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
like any other checkpoint, so the trainer and the server treat both the same way.

The tokenizer is byte-level (every UTF-8 byte is a token, plus a few specials), so it covers any text
without training. Its chat template is ChatML with Hermes-style tool calls
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``) and marks assistant turns with
``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the
loss mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = [
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
]

# ChatML; a tool call is emitted as JSON between <tool_call> tags, as Hermes/Qwen-style models do.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant\n"
    "{%- generation -%}"
    "{%- if message.get('content') -%}{{ message['content'] }}{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    '<tool_call>{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ call['function']['arguments'] if call['function']['arguments'] is string "
    "else call['function']['arguments'] | tojson }}}</tool_call>"
    "{%- endfor -%}"
    "<|im_end|>"
    "{%- endgeneration -%}\n"
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message.get('content') or '' }}<|im_end|>\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map, which the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over raw bytes with the ChatML/tool-call template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def tiny_llama_config(
    vocab_size: int, *, hidden_size: int = 128, layers: int = 2, heads: int = 4, max_positions: int = 1024
) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=4,
    )


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny Llama and the byte tokenizer to ``path``; returns the path."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_byte_tokenizer()
    # Round the vocabulary up to a multiple of 64: friendlier matrix shapes, same behaviour.
    vocab_size = (len(tokenizer) + 63) // 64 * 64
    config = tiny_llama_config(
        vocab_size, hidden_size=hidden_size, layers=layers, heads=heads, max_positions=max_positions
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "lightning-op-tiny.json").write_text(
        json.dumps({"hiddenSize": hidden_size, "layers": layers, "heads": heads, "seed": seed}) + "\n"
    )
    return out
