"""The trainer on a CUDA device: what the CPU tests cannot show (skipped without a GPU; CI has none).

The same toy tool-choice task and tiny Llama as ``test_trainer_runs.py``, trained on the GPU the way a
trainer pod runs it (``device: cuda``: bf16 frozen weights, bf16 autocast, fp32 adapters, the
attention kernel ``local.attention_implementation`` picks):

- training lifts the ``tool_selection`` score over the base model's, scored on the GPU, and the
  adapter it saves serves on the CPU (``evaluate_model(device="cpu")``) with the same lift: a model
  tuned on a GPU node is usable wherever it is promoted;
- SIGTERM mid-run, then resume on the GPU: the final loss is within 1% of the uninterrupted run's
  (the checkpoint carries the CUDA RNG and the optimizer state);
- packed examples do not attend to each other with the kernel the trainer uses on CUDA, in fp32
  and in bf16;
- a real CUDA out-of-memory error (the process capped below what the micro-batch needs) halves the
  micro-batch and the run completes (the CPU tests can only inject the error).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from support import tool_choice

from lightning_op.training import config as cfg
from lightning_op.training import data, local, tiny

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tool_choice.make_workdir(tmp_path_factory.mktemp("trainer-gpu"))


def _config(workdir: Path, out: str, **extra: Any) -> Path:
    body = {
        "baseModel": "tiny",
        "trainFile": "train.jsonl",
        "validationFile": "valid.jsonl",
        "outputDir": out,
        "device": "cuda",
        "hyperparameters": tool_choice.HYPERPARAMETERS,
        **extra,
    }
    path = workdir / f"{out}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def _trainer(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_op.trainer", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def trained(workdir: Path) -> dict[str, Any]:
    path = _config(workdir, "run", evaluation={"graderSpec": "tool_selection", "maxNewTokens": 48})
    return {"config": path, "events": _trainer("--config", str(path))}


def test_training_on_cuda_lifts_the_score_and_the_adapter_serves_on_the_cpu(
    workdir: Path, trained: dict[str, Any]
) -> None:
    started = next(e for e in trained["events"] if e["event"] == "started")
    assert started["device"].startswith("cuda") and started["dtype"] == "bfloat16", started
    assert started["attention"] == local.attention_implementation(torch.device("cuda"))
    (baseline,) = [
        e for e in _trainer("evaluate", "--config", str(trained["config"])) if e["event"] == "evaluated"
    ]
    final = trained["events"][-1]
    assert final["event"] == "completed" and final["reason"] == "Completed", final
    assert final["score"] >= baseline["score"] + 0.3, (baseline["score"], final["score"])
    progress = [e["loss"] for e in trained["events"] if e["event"] == "progress" and e["loss"] is not None]
    assert progress[0] > progress[-1]

    on_cpu = tool_choice.score_on_the_cpu(workdir, final["adapterPath"])
    assert on_cpu >= baseline["score"] + 0.3, (baseline["score"], on_cpu, final["score"])


def test_sigterm_then_resume_on_cuda_matches_the_uninterrupted_run(
    workdir: Path, trained: dict[str, Any]
) -> None:
    path = _config(workdir, "interrupted", resumeFrom="auto")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_op.trainer", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["step"] >= 45:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 143
    status = json.loads((workdir / "interrupted" / "status.json").read_text())
    assert (status["event"], status["reason"], status["resumable"]) == ("failed", "Terminated", True)

    writer = local.ProgressWriter(workdir / "interrupted" / "status.json", stream=io.StringIO())
    result = local.train(cfg.load_config(path), writer=writer, handle_sigterm=False)
    expected = trained["events"][-1]["trainLoss"]
    assert result.steps == trained["events"][-1]["step"]
    assert result.train_loss is not None
    assert abs(result.train_loss - expected) <= 0.01 * expected, (result.train_loss, expected)


def _example(start: int, n: int, prompt: int) -> data.Example:
    ids = list(range(start, start + n))
    return data.Example(ids, [data.IGNORE_INDEX] * prompt + ids[prompt:])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_packed_examples_do_not_attend_to_each_other_on_cuda(dtype: torch.dtype, tolerance: float) -> None:
    from transformers import LlamaForCausalLM

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    config = tiny.tiny_llama_config(128, hidden_size=64, max_positions=128)
    config._attn_implementation = local.attention_implementation(cuda)
    model = LlamaForCausalLM(config).to(cuda, dtype).eval()
    a, b = _example(3, 20, 5), _example(60, 15, 5)
    flatten = config._attn_implementation.startswith("flash")
    batch = data.collate([a, b], [data.Row((0, 1))], pad_id=0, packing=True, flatten=flatten)
    extra: dict[str, Any] = {}
    if flatten:  # the varlen boundaries the trainer passes flash-attention (see local._to_device)
        cu = batch.cu_seqlens.to(cuda)
        extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
        extra.update(max_length_q=batch.max_length, max_length_k=batch.max_length)
    with torch.no_grad():
        packed = (
            model(
                input_ids=batch.input_ids.to(cuda),
                position_ids=batch.position_ids.to(cuda),
                use_cache=False,
                **extra,
            )
            .logits[0]
            .float()
        )
        alone = model(input_ids=torch.tensor([b.input_ids], device=cuda), use_cache=False).logits[0].float()
        naive = model(input_ids=batch.input_ids.to(cuda), use_cache=False).logits[0].float()
    leak = (naive[20:35] - alone).abs().max().item()
    error = (packed[20:35] - alone).abs().max().item()
    assert error <= tolerance * max(1.0, alone.abs().max().item()), (error, leak)
    assert leak > 10 * error, (error, leak)


def _peak_reserved(config: cfg.TrainerConfig) -> int:
    """The CUDA memory the caching allocator reserved at most while ``config`` trained."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    local.train(config, writer=local.ProgressWriter(None, stream=io.StringIO()), handle_sigterm=False)
    torch.cuda.empty_cache()
    return int(torch.cuda.max_memory_reserved())


def test_a_real_cuda_out_of_memory_halves_the_micro_batch_and_the_run_completes(workdir: Path) -> None:
    tool_choice.write_jsonl(workdir / "long.jsonl", tool_choice.rows(800, seed=3))
    hyper = {
        **tool_choice.HYPERPARAMETERS,
        "epochs": 1,
        "maxSteps": 2,
        "checkpointSteps": 0,
        "maxSeqLength": 1024,
    }

    def config(out: str, batch: int) -> cfg.TrainerConfig:
        body = {
            "baseModel": "tiny",
            "trainFile": "long.jsonl",
            "outputDir": out,
            "device": "cuda",
            "hyperparameters": {**hyper, "batchSize": batch},
        }
        return cfg.parse_config(body, base_dir=workdir)

    # Measure what 16 and 2 packed rows per micro-batch need, then cap the process halfway between:
    # 16 rows cannot fit, 8 (and fewer) can.
    small, large = _peak_reserved(config("oom-m2", 2)), _peak_reserved(config("oom-m16", 16))
    assert large > 2 * small, (small, large)
    total = torch.cuda.get_device_properties(0).total_memory
    stream = io.StringIO()
    torch.cuda.set_per_process_memory_fraction((small + large) / 2 / total)
    try:
        result = local.train(
            config("oom-real", 16), writer=local.ProgressWriter(None, stream=stream), handle_sigterm=False
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    ooms = [e for e in events if e["event"] == "oom"]
    assert ooms, events
    assert all("out of memory" in e["message"].lower() and "injected" not in e["message"] for e in ooms)
    assert ooms[0]["microBatchSize"] == 8 and ooms[0]["gradientAccumulation"] == 2, ooms[0]
    assert result.steps == 2 and result.micro_batch_size <= 8, result
    losses = [e["loss"] for e in events if e["event"] == "progress" and e["loss"] is not None]
    assert losses and all(0 < loss < 100 for loss in losses), losses
