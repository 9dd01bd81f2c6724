"""Packing and batch planning: padding-free rows that behave like separate examples.

Covers:
- a packed row restarts ``position_ids`` at every example and never asks the last token of one
  example to predict the first token of the next;
- with this transformers version's sdpa and eager attention, an example's logits in a packed row
  equal its logits when run alone (no attention across examples), while a naive concatenation
  differs;
- a flattened micro-batch (flash-attention layout) carries int32 ``cu_seqlens`` and the longest
  example, and stays isolated per example;
- bin packing keeps every example exactly once and fills rows;
- each epoch's order is deterministic for a seed, differs between epochs, and covers every row once;
  padding mode buckets examples by length.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_op.training import data

IGNORE = data.IGNORE_INDEX


def _example(start: int, n: int, prompt: int) -> data.Example:
    ids = list(range(start, start + n))
    return data.Example(ids, [IGNORE] * prompt + ids[prompt:])


def test_packed_row_restarts_positions_and_keeps_targets_inside_each_example() -> None:
    a, b = _example(10, 6, 2), _example(40, 4, 1)
    batch = data.collate([a, b], [data.Row((0, 1)), data.Row((1,))], pad_id=0, packing=True)
    assert batch.attention_mask is None
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    # The short row is padded with a segment of its own.
    assert batch.input_ids[1].tolist() == [40, 41, 42, 43, 0, 0, 0, 0, 0, 0]
    assert batch.position_ids[1].tolist()[4:] == [0, 1, 2, 3, 4, 5]
    # Targets are next tokens within an example; the boundary and the padding learn nothing.
    assert batch.targets[0].tolist() == [IGNORE, 12, 13, 14, 15, IGNORE, 41, 42, 43, IGNORE]
    assert batch.targets[1].tolist() == [41, 42, 43] + [IGNORE] * 7
    assert (batch.tokens, batch.target_tokens) == (14, 4 + 3 + 3)


def test_padding_mode_uses_an_attention_mask() -> None:
    batch = data.collate(
        [_example(10, 5, 1), _example(40, 3, 1)], [data.Row((0,)), data.Row((1,))], pad_id=0, packing=False
    )
    assert batch.position_ids is None
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_to_each_other(tiny_llama: Any, attention: str) -> None:
    tiny_llama.config._attn_implementation = attention
    a, b = _example(3, 20, 5), _example(60, 15, 5)
    batch = data.collate([a, b], [data.Row((0, 1))], pad_id=0, packing=True)
    with torch.no_grad():
        packed = tiny_llama(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[0]
        alone = tiny_llama(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits[0]
        naive = tiny_llama(input_ids=batch.input_ids, use_cache=False).logits[0]
    torch.testing.assert_close(packed[20:35], alone, atol=1e-5, rtol=1e-4)
    assert (naive[20:35] - alone).abs().max() > 1e-3


def test_bin_packing_keeps_every_example_once_within_capacity() -> None:
    lengths = [50, 10, 90, 30, 70, 20, 60, 40, 80, 100]
    rows = data.pack_rows(lengths, capacity=100)
    placed = sorted(i for row in rows for i in row.examples)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row.examples) <= 100 for row in rows)
    assert len(rows) == 6  # 550 tokens: the optimum for capacity 100


def _order(plan: data.EpochPlan) -> list[tuple[int, ...]]:
    return [row.examples for step in plan.steps for row in step]


@pytest.mark.parametrize("packing", [True, False], ids=["packing", "padding"])
def test_epoch_order_is_deterministic_per_seed_and_epoch(packing: bool) -> None:
    lengths = [(i * 37) % 90 + 10 for i in range(64)]

    def plan(seed: int, epoch: int) -> data.EpochPlan:
        return data.plan_epoch(
            lengths, rows_per_step=4, max_seq_length=128, packing=packing, seed=seed, epoch=epoch
        )

    assert _order(plan(1, 0)) == _order(plan(1, 0))
    assert _order(plan(1, 0)) != _order(plan(1, 1))
    assert _order(plan(1, 0)) != _order(plan(2, 0))
    covered = sorted(i for row in _order(plan(1, 3)) for i in row)
    assert covered == list(range(len(lengths)))


def test_padding_mode_buckets_similar_lengths_into_a_step() -> None:
    lengths = [(i * 37) % 90 + 10 for i in range(256)]
    plan = data.plan_epoch(lengths, rows_per_step=8, max_seq_length=128, packing=False, seed=0, epoch=0)
    padded = sum(8 * max(lengths[r.examples[0]] for r in step) for step in plan.steps)
    assert padded < 1.15 * sum(lengths)  # unsorted batches would pad ~60% more


def test_flattened_batch_gives_flash_attention_its_boundaries(tiny_llama: Any) -> None:
    tiny_llama.config._attn_implementation = "sdpa"
    a, b, c = _example(3, 12, 2), _example(40, 7, 2), _example(70, 9, 3)
    batch = data.collate([a, b, c], [data.Row((0, 1)), data.Row((2,))], pad_id=0, packing=True, flatten=True)
    assert batch.input_ids.shape == (1, 28) and batch.tokens == 28
    assert batch.cu_seqlens.tolist() == [0, 12, 19, 28] and batch.max_length == 12
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.position_ids[0].tolist() == list(range(12)) + list(range(7)) + list(range(9))
    with torch.no_grad():
        flat = tiny_llama(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[
            0
        ]
        alone = tiny_llama(input_ids=torch.tensor([c.input_ids]), use_cache=False).logits[0]
    torch.testing.assert_close(flat[19:], alone, atol=1e-5, rtol=1e-4)
