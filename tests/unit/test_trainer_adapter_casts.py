"""Under bf16 autocast (the trainer on a GPU) the LoRA layers skip peft's fp32 cast of their input.

The cast is undone by autocast before ``lora_A``'s matmul, so skipping it must give the same loss
and the same adapter gradients, bit for bit, with fewer dtype copies per step (kernel launches bound
a GPU step of a small model). Shown on the CPU, whose autocast casts ``linear`` to bf16 the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_op.training import local, tiny

LAYERS = 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class CopyCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            self.copies += 1
        return func(*args, **(kwargs or {}))


def _peft_model() -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny.tiny_llama_config(128, hidden_size=64, layers=LAYERS, max_positions=128)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    with local.quiet_peft_deprecations():
        peft_model = get_peft_model(model, lora)
    # peft keeps the adapters in fp32 over a bf16 base, as the trainer's are
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)  # B starts at 0: make the adapter count
    assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)
    return peft_model


def _step(model: Any) -> tuple[float, dict[str, torch.Tensor], int]:
    model.zero_grad()
    ids = torch.arange(1, 33).view(1, 32)
    counter = CopyCounter()
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    with counter:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, counter.copies


def test_skipping_the_adapter_input_cast_changes_no_number_and_saves_copies() -> None:
    model = _peft_model()
    loss, grads, copies = _step(model)
    assert local.skip_adapter_input_casts(model) == LAYERS * len(TARGETS)
    loss_skipped, grads_skipped, copies_skipped = _step(model)
    assert loss_skipped == loss
    assert grads_skipped.keys() == grads.keys() and len(grads) == 2 * LAYERS * len(TARGETS)
    for name, grad in grads.items():
        assert torch.equal(grads_skipped[name], grad), name
    # two copies per layer forward (bf16 -> fp32 -> bf16), and backward's for them: 130 -> 80 here
    assert copies - copies_skipped >= 3 * LAYERS * len(TARGETS), (copies, copies_skipped)
