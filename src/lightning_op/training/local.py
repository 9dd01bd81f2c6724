"""The local LoRA trainer: one training round on a base model from a path, with torch and peft.

This is the code the trainer image runs (``python -m lightning_op.trainer``) and ``start-training``
starts as a subprocess. It reads a ``config.TrainerConfig``, turns the dataset into token rows with
``data``, and runs its own loop (not ``transformers.Trainer``), for speed and for control over
checkpoints, failures and progress:

- LoRA adapters (rank, alpha, dropout, target modules detected from the architecture) on a frozen
  base model; only the adapter parameters reach AdamW (fused on CUDA). ``initAdapter`` continues
  from a previous round's adapter.
- On CUDA the frozen weights are loaded in bf16 and the step runs under bf16 autocast (adapters stay
  fp32, their inputs are not cast to fp32 first: ``skip_adapter_input_casts``); flash-attention 2
  when installed, else sdpa. On the CPU everything is fp32.
- Packing (see ``data``): no pad tokens computed. Logits are computed only at positions that carry
  a target (assistant tokens): the final projection never runs over prompt tokens, which saves most
  of the vocabulary-sized activations.
- Gradient accumulation over a fixed set of rows per optimizer step, the loss normalised by the
  step's target tokens, so the gradient does not depend on how the step is split into micro-batches.
- Linear, cosine or constant schedule with warmup; gradient clipping; one host sync per optimizer
  step of our own (loss and gradient norm, checked for NaN/Inf *before* the update, so a divergence
  never reaches the weights). transformers adds one per forward pass when it detects packed
  ``position_ids`` for eager/sdpa masks; with flash-attention the trainer passes precomputed
  ``cu_seq_lens`` so none is needed per layer.
- Checkpoints (adapter + optimizer + scheduler + RNG states + data position) every
  ``checkpointSteps``, on SIGTERM and at the end, written to a temporary directory then renamed.
  ``resumeFrom: auto`` continues from the last one with the same data order and RNG streams.
- Out of memory on the accelerator halves the micro-batch (accumulation doubles, same rows per step)
  up to ``MAX_OOM_HALVINGS`` times, then fails with ``OutOfMemory``.

Progress goes out as JSON lines on stdout (the protocol the operator and ``start-training`` read)
and to the status file, rewritten atomically; every line is also appended to
``outputDir/progress.jsonl`` for loss curves. Events: ``started``, ``progress``, ``checkpoint``,
``oom``, and finally ``completed`` or ``failed`` (``reason``: ``Diverged``, ``OutOfMemory``,
``Terminated``, ``InvalidConfig``, ``InvalidDataset``, ``EvaluationFailed``, ``Error``).
``ExitCode`` maps reasons to the process's exit status.

Test hooks (environment): ``LIGHTNING_TRAINER_INJECT_NAN_AT_STEP=K`` makes optimizer step K's loss
NaN; ``LIGHTNING_TRAINER_INJECT_OOM=N`` raises an out-of-memory error on the first N forward
passes; ``LIGHTNING_TRAINER_FLATTEN=1`` uses the one-row flash-attention batch layout on any kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lightning_op.training import config as cfg
from lightning_op.training import data

log = logging.getLogger(__name__)

MAX_OOM_HALVINGS = 3
KEEP_CHECKPOINTS = 2
STATUS_MIN_INTERVAL_S = 1.0
ENV_INJECT_NAN = "LIGHTNING_TRAINER_INJECT_NAN_AT_STEP"
ENV_INJECT_OOM = "LIGHTNING_TRAINER_INJECT_OOM"
#: force one-row (flash-attention style) batches on any attention kernel: tests that path on the CPU
ENV_FLATTEN = "LIGHTNING_TRAINER_FLATTEN"

#: architectures whose causal-LM head is a plain projection of the decoder's last hidden state, so
#: the trainer can run it on target positions only (others compute full logits: softcapping, ...)
_SPLIT_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


class Reason(enum.StrEnum):
    COMPLETED = "Completed"
    DIVERGED = "Diverged"
    OUT_OF_MEMORY = "OutOfMemory"
    TERMINATED = "Terminated"
    INVALID_CONFIG = "InvalidConfig"
    INVALID_DATASET = "InvalidDataset"
    #: training completed and the adapter is saved, but the requested evaluation could not run
    EVALUATION_FAILED = "EvaluationFailed"
    ERROR = "Error"


class ExitCode(enum.IntEnum):
    """The trainer process's exit status, one per outcome (documented in ``trainer.__main__``)."""

    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    DIVERGED = 3
    OUT_OF_MEMORY = 4
    EVALUATION_FAILED = 5
    #: stopped by SIGTERM after writing a checkpoint (128 + 15, as a shell reports it)
    TERMINATED = 143


EXIT_CODES: dict[Reason, ExitCode] = {
    Reason.COMPLETED: ExitCode.OK,
    Reason.DIVERGED: ExitCode.DIVERGED,
    Reason.OUT_OF_MEMORY: ExitCode.OUT_OF_MEMORY,
    Reason.TERMINATED: ExitCode.TERMINATED,
    Reason.INVALID_CONFIG: ExitCode.BAD_INPUT,
    Reason.INVALID_DATASET: ExitCode.BAD_INPUT,
    Reason.EVALUATION_FAILED: ExitCode.EVALUATION_FAILED,
    Reason.ERROR: ExitCode.ERROR,
}


class TrainingFailed(RuntimeError):
    """The round stopped without an adapter; the final ``failed`` event is already written."""

    def __init__(self, reason: Reason, message: str, *, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.reason]


def reported_loss(loss: float | None) -> float | None:
    """A loss as every progress line and the round's result report it (6 digits), so a round's
    losses print as its last epoch's."""
    return None if loss is None else round(loss, 6)


@dataclass
class TrainResult:
    adapter_path: Path
    train_loss: float | None
    valid_loss: float | None
    steps: int
    total_steps: int
    epochs: int
    tokens: int
    tokens_per_second: float
    train_seconds: float
    micro_batch_size: int
    gradient_accumulation: int
    checkpoint_path: Path | None
    peak_memory_bytes: int | None
    #: the trained ``PeftModel`` and its tokenizer, when ``train(keep_model=True)``
    model: Any = dataclasses.field(default=None, repr=False)
    tokenizer: Any = dataclasses.field(default=None, repr=False)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "adapterPath": str(self.adapter_path),
            "trainLoss": reported_loss(self.train_loss),
            "validLoss": reported_loss(self.valid_loss),
            "step": self.steps,
            "totalSteps": self.total_steps,
            "epoch": self.epochs,
            "tokens": self.tokens,
            "tokensPerSecond": round(self.tokens_per_second, 1),
            "trainSeconds": round(self.train_seconds, 3),
            "microBatchSize": self.micro_batch_size,
            "gradientAccumulation": self.gradient_accumulation,
            "checkpointPath": str(self.checkpoint_path) if self.checkpoint_path else None,
            "peakMemoryBytes": self.peak_memory_bytes,
        }


# ------------------------------------------------------------------------------------------ progress


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` so readers see the old or the new content, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ProgressWriter:
    """Emits the trainer's JSON-lines protocol to a stream, the status file and a history file.

    The status file always holds the latest event (rewritten atomically, at most once per
    ``min_interval`` seconds for ``progress`` events; every other event is written at once).
    """

    def __init__(
        self,
        status_path: Path | None,
        *,
        stream: IO[str] | None = None,
        history_path: Path | None = None,
        min_interval: float = STATUS_MIN_INTERVAL_S,
        base: dict[str, Any] | None = None,
    ) -> None:
        self.status_path = status_path
        self.stream = stream
        self.history_path = history_path
        self.min_interval = min_interval
        self.base = dict(base or {})
        self.last: dict[str, Any] | None = None
        self._last_write = 0.0
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        line = {"event": event, **self.base, **{k: _finite_or_none(v) for k, v in fields.items()}}
        line["time"] = round(time.time(), 3)
        text = json.dumps(line, allow_nan=False)
        with self._lock:
            self.last = line
            if self.stream is not None:
                self.stream.write(text + "\n")
                self.stream.flush()
            if self.history_path is not None:
                self.history_path.parent.mkdir(parents=True, exist_ok=True)
                with self.history_path.open("a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            now = time.monotonic()
            if self.status_path is not None and (
                event != "progress" or now - self._last_write >= self.min_interval
            ):
                write_json_atomic(self.status_path, line)
                self._last_write = now
        return line

    def flush_status(self) -> None:
        """Make sure the status file holds the latest event (a throttled progress line included)."""
        with self._lock:
            if self.status_path is not None and self.last is not None:
                write_json_atomic(self.status_path, self.last)
                self._last_write = time.monotonic()


def default_writer(config: cfg.TrainerConfig, stream: IO[str] | None = None) -> ProgressWriter:
    return ProgressWriter(
        config.status_path,
        stream=stream if stream is not None else sys.stdout,
        history_path=config.output_dir / "progress.jsonl",
        base={"round": config.round},
    )


# ------------------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a config error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError("device: 'cuda' was requested but torch sees no CUDA device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def uses_bf16(device: Any) -> bool:
    import torch

    return bool(device.type == "cuda" and torch.cuda.is_bf16_supported())


def attention_implementation(device: Any) -> str:
    """flash-attention 2 on a bf16-capable GPU when the package is installed, else PyTorch's sdpa."""
    if uses_bf16(device):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def detect_target_modules(model_type: str, module_names: Sequence[str]) -> list[str]:
    """LoRA targets for ``model_type``, else every ``nn.Linear`` leaf name except the LM head."""
    known = cfg.TARGET_MODULES.get(model_type)
    if known:
        return list(known)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in module_names} - {"lm_head", "embed_out"})
    if not leaves:
        raise cfg.ConfigError(
            f"hyperparameters.targetModules: cannot detect LoRA targets for model type {model_type!r}; "
            "list the module names to adapt"
        )
    return leaves


# --------------------------------------------------------------------------------------------- model


@dataclass
class LoadedModel:
    model: Any  # peft.PeftModel
    tokenizer: Any
    device: Any
    dtype: Any
    attention: str
    target_modules: list[str]
    #: the causal LM under peft's wrappers, for generation and the split head
    base: Any


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    data.ensure_chat_template(tokenizer)
    return tokenizer


def load_base_model(path: Path, device: Any, *, attention: str | None = None) -> Any:
    """The base causal LM from a local directory: bf16 on a bf16-capable GPU, else fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if uses_bf16(device) else torch.float32
    if not (path / "config.json").is_file():
        raise cfg.ConfigError(f"baseModel: {path} is not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        local_files_only=True,
        attn_implementation=attention or attention_implementation(device),
    )
    return model.to(device)


@contextlib.contextmanager
def quiet_peft_deprecations() -> Iterator[None]:
    """Hide the FutureWarning peft's adapter wrapping triggers on every load: peft reads
    ``model.is_gradient_checkpointing``, which transformers 5 deprecated. Nothing a user can act on;
    it filled every trainer's stderr and the model server's log. Other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def load_for_training(config: cfg.TrainerConfig, device: Any) -> LoadedModel:
    """Base model + tokenizer with a trainable LoRA adapter (fresh, or ``initAdapter``'s weights)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    hp = config.hyperparameters
    tokenizer = load_tokenizer(config.base_model)
    model = load_base_model(config.base_model, device)
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if config.init_adapter is not None:
        if not (config.init_adapter / "adapter_config.json").is_file():
            raise cfg.ConfigError(f"initAdapter: {config.init_adapter} holds no adapter_config.json")
        with quiet_peft_deprecations():
            peft_model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
        targets = sorted(getattr(peft_model.peft_config["default"], "target_modules", None) or [])
    else:
        linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        targets = hp.target_modules or detect_target_modules(model.config.model_type, linear_names)
        lora = LoraConfig(
            r=hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            with quiet_peft_deprecations():
                peft_model = get_peft_model(model, lora)
        except ValueError as exc:
            raise cfg.ConfigError(f"hyperparameters.targetModules: {exc}") from None
    if uses_bf16(device):
        skip_adapter_input_casts(peft_model)
    return LoadedModel(
        model=peft_model,
        tokenizer=tokenizer,
        device=device,
        dtype=model.dtype,
        attention=str(model.config._attn_implementation),
        target_modules=list(targets),
        base=peft_model.get_base_model(),
    )


def skip_adapter_input_casts(model: Any) -> int:
    """Stop peft casting each LoRA layer's input to the adapter's fp32 before its bf16 matmul.

    Under bf16 autocast peft casts ``x`` (bf16) to fp32 to match the fp32 adapter weights, and
    autocast casts it straight back to bf16 for ``lora_A``'s matmul: two copies per layer forward,
    and backward's for them, for the same numbers. A GPU step of a small model is bound by
    launching kernels (the benchmark's 0.5B config on an H200: 6,300 kernels a step, 1,800 of them
    dtype copies, the GPU busy under a fifth of the time), so each copy saved is time saved. Returns how
    many layers changed.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False  # type: ignore[attr-defined]  # read by getattr in peft
    return len(layers)


# ---------------------------------------------------------------------------------------- checkpoints


def find_last_checkpoint(checkpoints_dir: Path, run_key: str | None = None) -> Path | None:
    """The complete checkpoint with the highest step under ``checkpoints_dir``, if any; with
    ``run_key``, only one written by a run of that key (see ``checkpoint_run_key``)."""
    best: tuple[int, Path] | None = None
    if not checkpoints_dir.is_dir():
        return None
    for child in checkpoints_dir.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and (child / "checkpoint.json").is_file():
            if run_key is not None and checkpoint_run_key(child) != run_key:
                continue
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, child)
    return best[1] if best else None


def checkpoint_run_key(checkpoint: Path) -> str | None:
    """The run key a checkpoint was written with (None: unreadable, or written before keys)."""
    try:
        meta = json.loads((checkpoint / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = meta.get("runKey") if isinstance(meta, dict) else None
    return str(key) if key else None


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _rng_state(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    np_state: Any = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: Any) -> None:
    import numpy as np
    import torch

    version, pyints, gauss = state["python"]
    random.setstate((version, tuple(pyints), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- loop


@dataclass
class _Position:
    """Where training is; saved in checkpoints. Loss sums are for the current epoch."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_targets: int = 0
    last_epoch_loss: float | None = None
    valid_loss: float | None = None
    micro_batch: int = 1
    oom_halvings: int = 0
    tokens_total: int = 0


def _lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


class _Injector:
    """Test hooks from the environment: a NaN loss at one step, out-of-memory errors on the first N passes."""

    def __init__(self) -> None:
        self.nan_step = int(os.environ.get(ENV_INJECT_NAN, "0") or 0)
        self.oom_left = int(os.environ.get(ENV_INJECT_OOM, "0") or 0)

    def maybe_oom(self) -> None:
        if self.oom_left > 0:
            import torch

            self.oom_left -= 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {ENV_INJECT_OOM})")


class _Trainer:
    def __init__(
        self,
        config: cfg.TrainerConfig,
        writer: ProgressWriter,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.hp = config.hyperparameters
        self.writer = writer
        self.stop = stop
        self.inject = _Injector()

    # -- setup ---------------------------------------------------------------------------------------

    def prepare(self) -> None:
        import torch

        hp = self.hp
        # Validate both files before loading any weights: a bad dataset fails in milliseconds.
        train_rows = data.read_rows(self.config.train_file)
        valid_rows = data.read_rows(self.config.validation_file) if self.config.validation_file else []
        self.device = resolve_device(self.config.device)
        seed_everything(hp.seed)
        self.loaded = load_for_training(self.config, self.device)
        self.model = self.loaded.model
        tokenizer = self.loaded.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.examples, self.stats = data.tokenize_rows(train_rows, tokenizer, hp.max_seq_length)
        if not self.examples:
            raise data.DatasetError(
                self.config.train_file,
                [(0, f"no example keeps an assistant token within maxSeqLength={hp.max_seq_length}")],
            )
        self.valid_examples, _ = data.tokenize_rows(valid_rows, tokenizer, hp.max_seq_length)
        self.lengths = [len(e) for e in self.examples]
        self.target_counts = [sum(1 for t in e.labels[1:] if t != data.IGNORE_INDEX) for e in self.examples]
        self.packed = data.pack_rows(self.lengths, hp.max_seq_length) if hp.packing else None
        self.rows_per_step = hp.batch_size * hp.gradient_accumulation
        n_rows = len(self.packed) if self.packed is not None else len(self.examples)
        self.steps_per_epoch = math.ceil(n_rows / self.rows_per_step)
        planned = self.steps_per_epoch * hp.epochs
        self.total_steps = min(planned, hp.max_steps) if hp.max_steps else planned
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.run_key = self._run_key()

        base = self.loaded.base
        self.split_head = base.config.model_type in _SPLIT_HEAD_TYPES
        # flash-attention reads packed sequences only from a one-row batch (see data.collate).
        self.flatten = self.loaded.attention.startswith("flash") or os.environ.get(ENV_FLATTEN) == "1"
        self.decoder: Any = base.get_decoder() if self.split_head else None
        self.lm_head: Any = base.get_output_embeddings() if self.split_head else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable_params = params
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(
            params,
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            fused=self.device.type == "cuda",
        )
        warmup = math.ceil(hp.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(hp.lr_scheduler, warmup, self.total_steps)
        )
        self.pos = _Position(micro_batch=hp.batch_size)
        self.resumed_from: Path | None = None
        checkpoint = self._checkpoint_to_resume()
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
            self.resumed_from = checkpoint

    def _run_key(self) -> str:
        """What makes a checkpoint this run's: the round, the step plan, the base model, the training
        data as tokenized and the hyperparameters. A checkpoint left in the output directory by a
        run with another config or dataset must not be resumed (its adapter would come out as this
        run's, even with more steps than this run plans)."""
        identity = {
            "round": self.config.round,
            "totalSteps": self.total_steps,
            "baseModel": str(self.config.base_model),
            "examples": len(self.examples),
            "tokens": sum(self.lengths),
            "hyperparameters": self.config.hyperparameters.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def _checkpoint_to_resume(self) -> Path | None:
        resume = self.config.resume_from
        if resume is None:
            return None
        if resume == "auto":
            found = find_last_checkpoint(self.config.checkpoints_dir, self.run_key)
            if found is None and find_last_checkpoint(self.config.checkpoints_dir) is not None:
                log.warning(
                    "resumeFrom auto: the checkpoints in %s are from another run (config or dataset "
                    "differ): starting from step 0",
                    self.config.checkpoints_dir,
                )
            return found
        path = Path(resume)
        if not (path / "checkpoint.json").is_file():
            raise cfg.ConfigError(f"resumeFrom: {path} is not a checkpoint directory (no checkpoint.json)")
        if checkpoint_run_key(path) != self.run_key:
            raise cfg.ConfigError(
                f"resumeFrom: {path} was written by another run (its round, steps, base model, dataset "
                "or hyperparameters differ from this config)"
            )
        return path

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if uses_bf16(self.device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- steps ---------------------------------------------------------------------------------------

    def _to_device(self, batch: data.Batch) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        flat_targets = batch.targets.view(-1)
        index = (flat_targets != data.IGNORE_INDEX).nonzero().view(-1)
        out: dict[str, Any] = {
            "input_ids": batch.input_ids.to(self.device, non_blocking=non_blocking),
            "index": index.to(self.device, non_blocking=non_blocking),
            "targets": flat_targets[index].to(self.device, non_blocking=non_blocking),
        }
        if batch.position_ids is not None:
            out["position_ids"] = batch.position_ids.to(self.device, non_blocking=non_blocking)
        if batch.attention_mask is not None:
            out["attention_mask"] = batch.attention_mask.to(self.device, non_blocking=non_blocking)
        if batch.cu_seqlens is not None:
            # Precomputed varlen boundaries: flash-attention then skips deriving them from
            # position_ids, which costs a device sync in every layer. Other kernels ignore them.
            cu = batch.cu_seqlens.to(self.device, non_blocking=non_blocking)
            out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = cu
            out["max_length_q"] = out["max_length_k"] = batch.max_length
        return out

    def loss_sum(self, batch: data.Batch) -> Any:
        """Summed cross-entropy over the batch's target tokens (computed only where targets are)."""
        import torch.nn.functional as F

        self.inject.maybe_oom()
        t = self._to_device(batch)
        kwargs = {k: v for k, v in t.items() if k not in ("index", "targets")}
        with self.autocast():
            if self.split_head:
                hidden = self.decoder(**kwargs, use_cache=False).last_hidden_state
                hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, t["index"])
                logits = self.lm_head(hidden)
            else:
                logits = self.model(**kwargs, use_cache=False).logits
                logits = logits.reshape(-1, logits.shape[-1]).index_select(0, t["index"])
        return F.cross_entropy(logits.float(), t["targets"], reduction="sum")

    def _forward_backward(self, rows: Sequence[data.Row], step_targets: int) -> tuple[Any, int]:
        import torch

        total = torch.zeros((), device=self.device)
        tokens = 0
        for micro in data.micro_batches(rows, self.pos.micro_batch):
            batch = data.collate(
                self.examples, micro, pad_id=self.pad_id, packing=self.hp.packing, flatten=self.flatten
            )
            loss = self.loss_sum(batch) / step_targets
            if self.inject.nan_step == self.pos.global_step + 1:
                loss = loss * float("nan")
            loss.backward()
            total += loss.detach()
            tokens += batch.tokens
        return total, tokens

    def run_step(self, rows: Sequence[data.Row]) -> tuple[float, int, int]:
        """Forward/backward of one step's rows, retried after out-of-memory errors.

        Returns the step's loss per target token, its real tokens and its target tokens.
        """
        import torch

        step_targets = sum(self.target_counts[i] for r in rows for i in r.examples)
        while True:
            try:
                total, tokens = self._forward_backward(rows, max(1, step_targets))
                break
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                message = str(exc)
            # Recover outside the except block: the traceback's frames hold the failed pass's
            # activations, and the memory only comes back once they are gone.
            self._recover_from_oom(message)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, self.hp.max_grad_norm)
        # The step's only host sync: the loss and the gradient norm, checked before the update.
        loss, grad_norm = torch.stack([total.float(), norm.float()]).tolist()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
            raise TrainingFailed(
                Reason.DIVERGED,
                f"{what} at step {self.pos.global_step + 1}; lower hyperparameters.learningRate "
                "or check the dataset",
            )
        return float(loss), tokens, step_targets

    def _recover_from_oom(self, exc: str) -> None:
        import gc

        import torch

        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.pos.oom_halvings >= MAX_OOM_HALVINGS or self.pos.micro_batch <= 1:
            raise TrainingFailed(
                Reason.OUT_OF_MEMORY,
                f"out of memory with micro-batch {self.pos.micro_batch} after "
                f"{self.pos.oom_halvings} halvings ({exc}); lower hyperparameters.batchSize or "
                "maxSeqLength, enable gradientCheckpointing, or use a larger GPU",
            ) from None
        before = self.pos.micro_batch
        self.pos.micro_batch = max(1, before // 2)
        self.pos.oom_halvings += 1
        log.warning(
            "out of memory at micro-batch %d: retrying the step with %d", before, self.pos.micro_batch
        )
        self.writer.emit(
            "oom",
            step=self.pos.global_step,
            microBatchSize=self.pos.micro_batch,
            gradientAccumulation=self.accumulation,
            halvings=self.pos.oom_halvings,
            message=exc[:500],
        )

    @property
    def accumulation(self) -> int:
        return math.ceil(self.rows_per_step / self.pos.micro_batch)

    def validation_loss(self) -> float | None:
        import torch

        if not self.valid_examples:
            return None
        lengths = [len(e) for e in self.valid_examples]
        rows = (
            data.pack_rows(lengths, self.hp.max_seq_length)
            if self.hp.packing
            else [data.Row((i,)) for i in sorted(range(len(lengths)), key=lambda i: lengths[i])]
        )
        self.model.eval()
        total = torch.zeros((), device=self.device)
        targets = 0
        try:
            with torch.no_grad():
                for micro in data.micro_batches(rows, self.pos.micro_batch):
                    batch = data.collate(
                        self.valid_examples,
                        micro,
                        pad_id=self.pad_id,
                        packing=self.hp.packing,
                        flatten=self.flatten,
                    )
                    total += self.loss_sum(batch)
                    targets += batch.target_tokens
        finally:
            self.model.train()
        return float(total.item()) / max(1, targets)

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        import torch

        root = self.config.checkpoints_dir
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.pos.global_step:07d}"
        final = root / name
        tmp = root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        self.model.save_pretrained(tmp / "adapter")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(self.device),
                "position": dataclasses.asdict(self.pos),
            },
            tmp / "trainer_state.pt",
        )
        meta = {
            "step": self.pos.global_step,
            "epoch": self.pos.epoch,
            "stepInEpoch": self.pos.step_in_epoch,
            "totalSteps": self.total_steps,
            "round": self.config.round,
            "runKey": self.run_key,
        }
        (tmp / "checkpoint.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._prune_checkpoints(keep=final)
        self.writer.emit("checkpoint", step=self.pos.global_step, checkpointPath=str(final))
        return final

    def _prune_checkpoints(self, keep: Path) -> None:
        """Keep this run's newest ``KEEP_CHECKPOINTS``; another run's (another key) go at once."""
        found = sorted(
            (int(m.group(1)), p)
            for p in self.config.checkpoints_dir.iterdir()
            if (m := _CHECKPOINT_NAME.match(p.name))
        )
        foreign = [p for _, p in found if checkpoint_run_key(p) != self.run_key]
        mine = [p for _, p in found if p not in foreign]
        for path in foreign + mine[:-KEEP_CHECKPOINTS]:
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    def _load_checkpoint(self, path: Path) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = path / "adapter" / "adapter_model.safetensors"
        state_file = path / "trainer_state.pt"
        if not weights.is_file() or not state_file.is_file():
            raise cfg.ConfigError(
                f"resumeFrom: {path} is incomplete (adapter weights or trainer_state.pt missing)"
            )
        set_peft_model_state_dict(self.model, load_file(str(weights), device=str(self.device)))
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], self.device)
        self.pos = _Position(**state["position"])
        log.info("resumed from %s at step %d", path, self.pos.global_step)

    def save_adapter(self) -> Path:
        out = self.config.adapter_dir
        tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp)
        meta = {
            "baseModel": str(self.config.base_model),
            "round": self.config.round,
            "steps": self.pos.global_step,
            "trainLoss": self.pos.last_epoch_loss,
            "validLoss": self.pos.valid_loss,
        }
        (tmp / "lightning-op.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out

    # -- the loop ------------------------------------------------------------------------------------

    def _epoch_steps(self) -> list[list[data.Row]]:
        plan = data.plan_epoch(
            self.lengths,
            rows_per_step=self.rows_per_step,
            max_seq_length=self.hp.max_seq_length,
            packing=self.hp.packing,
            seed=self.hp.seed,
            epoch=self.pos.epoch,
            packed=self.packed,
        )
        return plan.steps

    def started_fields(self) -> dict[str, Any]:
        total_params = sum(p.numel() for p in self.model.parameters())
        return {
            "device": str(self.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "attention": self.loaded.attention,
            "packing": self.hp.packing,
            "examples": self.stats.examples,
            "validationExamples": len(self.valid_examples),
            "truncated": self.stats.truncated,
            "dropped": self.stats.dropped,
            "tokens": self.stats.tokens,
            "targetTokens": self.stats.label_tokens,
            "rows": len(self.packed) if self.packed is not None else len(self.examples),
            "stepsPerEpoch": self.steps_per_epoch,
            "totalSteps": self.total_steps,
            "epochs": self.total_epochs,
            "targetModules": self.loaded.target_modules,
            "trainableParameters": self.trainable,
            "totalParameters": total_params,
            "resumedFrom": str(self.resumed_from) if self.resumed_from else None,
            "step": self.pos.global_step,
        }

    def train(self) -> TrainResult:

        self.writer.emit("started", **self.started_fields())
        self.model.train()
        pos = self.pos
        train_seconds = 0.0
        tokens_here = 0
        steps_here = 0
        last_checkpoint: Path | None = self.resumed_from
        if self.stop.is_set():  # SIGTERM while loading: nothing new to save
            raise TrainingFailed(
                Reason.TERMINATED,
                f"terminated before training at step {pos.global_step}; resume with resumeFrom: auto",
                checkpoint=self.resumed_from,
            )
        while pos.global_step < self.total_steps:
            steps = self._epoch_steps()
            while pos.step_in_epoch < len(steps) and pos.global_step < self.total_steps:
                started = time.perf_counter()
                loss, tokens, targets = self.run_step(steps[pos.step_in_epoch])
                self.optimizer.step()
                lr = float(self.scheduler.get_last_lr()[0])
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                pos.global_step += 1
                pos.step_in_epoch += 1
                pos.epoch_loss_sum += loss * targets
                pos.epoch_targets += targets
                pos.tokens_total += tokens
                train_seconds += time.perf_counter() - started
                tokens_here += tokens
                steps_here += 1
                evaluate_now = bool(self.hp.eval_steps) and pos.global_step % self.hp.eval_steps == 0
                if evaluate_now:
                    pos.valid_loss = self.validation_loss()
                self._progress(loss, lr, tokens_here, steps_here, train_seconds)
                if self.hp.checkpoint_steps and pos.global_step % self.hp.checkpoint_steps == 0:
                    last_checkpoint = self.save_checkpoint()
                if self.stop.is_set():
                    checkpoint = self.save_checkpoint()
                    raise TrainingFailed(
                        Reason.TERMINATED,
                        f"terminated at step {pos.global_step}/{self.total_steps}; "
                        "resume with resumeFrom: auto",
                        checkpoint=checkpoint,
                    )
            if pos.step_in_epoch >= len(steps):
                pos.last_epoch_loss = pos.epoch_loss_sum / max(1, pos.epoch_targets)
                pos.valid_loss = self.validation_loss()
                pos.epoch += 1
                pos.step_in_epoch = 0
                pos.epoch_loss_sum = 0.0
                pos.epoch_targets = 0
                self._progress(None, None, tokens_here, steps_here, train_seconds, epoch_end=True)
        if pos.epoch_targets:  # maxSteps stopped mid-epoch: report that partial epoch's loss
            pos.last_epoch_loss = pos.epoch_loss_sum / pos.epoch_targets
            pos.valid_loss = self.validation_loss()
        if last_checkpoint is None or not last_checkpoint.name.endswith(f"{pos.global_step:07d}"):
            last_checkpoint = self.save_checkpoint()
        adapter = self.save_adapter()
        return TrainResult(
            adapter_path=adapter,
            train_loss=pos.last_epoch_loss,
            valid_loss=pos.valid_loss,
            steps=pos.global_step,
            total_steps=self.total_steps,
            epochs=pos.epoch,
            tokens=pos.tokens_total,
            tokens_per_second=tokens_here / train_seconds if train_seconds else 0.0,
            train_seconds=train_seconds,
            micro_batch_size=pos.micro_batch,
            gradient_accumulation=self.accumulation,
            checkpoint_path=last_checkpoint,
            peak_memory_bytes=peak_memory_bytes(self.device),
        )

    def _progress(
        self,
        loss: float | None,
        lr: float | None,
        tokens_here: int,
        steps_here: int,
        seconds: float,
        *,
        epoch_end: bool = False,
    ) -> None:
        pos = self.pos
        remaining = self.total_steps - pos.global_step
        fields: dict[str, Any] = {
            "percent": round(100.0 * pos.global_step / self.total_steps, 2),
            "epoch": pos.epoch + (0 if epoch_end else 1),
            "step": pos.global_step,
            "totalSteps": self.total_steps,
            "loss": reported_loss(loss),
            "validLoss": reported_loss(pos.valid_loss),
            "tokens": pos.tokens_total,
            "tokensPerSecond": round(tokens_here / seconds, 1) if seconds else None,
            "etaSeconds": round(remaining * seconds / steps_here, 1) if steps_here else None,
            "learningRate": lr,
            "microBatchSize": pos.micro_batch,
            "gradientAccumulation": self.accumulation,
        }
        if epoch_end:
            fields["epochEnd"] = True
            fields["trainLoss"] = reported_loss(pos.last_epoch_loss)
        self.writer.emit("progress", **fields)


def peak_memory_bytes(device: Any) -> int | None:
    """Peak accelerator memory allocated by torch; on the CPU, the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def sigterm_sets(stop: threading.Event) -> Iterator[None]:
    """While active, SIGTERM sets ``stop`` (the loop checkpoints and exits) instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: finishing the current step, then checkpointing")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(
    config: cfg.TrainerConfig,
    *,
    writer: ProgressWriter | None = None,
    stop: threading.Event | None = None,
    handle_sigterm: bool = True,
    finish: bool = True,
    keep_model: bool = False,
) -> TrainResult:
    """Train one round; writes ``started``/``progress``/... and the final event through ``writer``.

    Returns the result after a ``completed`` event, or raises ``TrainingFailed`` after a ``failed``
    event (``exit_code`` says how the process should exit). Bad config or data surface as
    ``TrainingFailed`` with ``InvalidConfig``/``InvalidDataset`` before any weights are loaded.
    ``finish=False`` leaves the ``completed`` event to the caller (the CLI adds the evaluation's
    score to it, see ``completed``); ``keep_model=True`` returns the trained model in the result.
    """
    writer = writer if writer is not None else default_writer(config)
    stop = stop if stop is not None else threading.Event()
    trainer = _Trainer(config, writer, stop)
    context = sigterm_sets(stop) if handle_sigterm else contextlib.nullcontext()
    with context:
        try:
            trainer.prepare()
            result = trainer.train()
        except TrainingFailed as exc:
            fail(writer, exc.reason, exc.message, checkpoint=exc.checkpoint, position=_position_of(trainer))
            raise
        except data.DatasetError as exc:
            fail(writer, Reason.INVALID_DATASET, str(exc), lines=exc.line_numbers)
            raise TrainingFailed(Reason.INVALID_DATASET, str(exc)) from exc
        except cfg.ConfigError as exc:
            fail(writer, Reason.INVALID_CONFIG, str(exc))
            raise TrainingFailed(Reason.INVALID_CONFIG, str(exc)) from exc
        except Exception as exc:
            if is_out_of_memory(exc):
                reason, message = Reason.OUT_OF_MEMORY, f"out of memory outside the training step: {exc}"
            else:
                reason, message = Reason.ERROR, f"{type(exc).__name__}: {exc}"
            log.exception("training failed")
            fail(writer, reason, message, position=_position_of(trainer))
            raise TrainingFailed(reason, message) from exc
    if keep_model:
        result.model, result.tokenizer = trainer.model, trainer.loaded.tokenizer
    if finish:
        completed(writer, result)
    return result


def completed(writer: ProgressWriter, result: TrainResult, **extra: Any) -> None:
    """Write the final ``completed`` event: the result's figures plus ``extra`` (score, ...)."""
    writer.emit("completed", reason=Reason.COMPLETED.value, percent=100.0, **result.to_json_dict(), **extra)


def _position_of(trainer: _Trainer) -> dict[str, Any]:
    pos = getattr(trainer, "pos", None)
    if pos is None:
        return {}
    return {"step": pos.global_step, "totalSteps": getattr(trainer, "total_steps", None)}


def fail(
    writer: ProgressWriter,
    reason: Reason,
    message: str,
    *,
    checkpoint: Path | None = None,
    position: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write the final ``failed`` event (status file included) with its reason and exit code."""
    writer.emit(
        "failed",
        reason=reason.value,
        message=message,
        exitCode=int(EXIT_CODES[reason]),
        checkpointPath=str(checkpoint) if checkpoint else None,
        resumable=checkpoint is not None,
        **(position or {}),
        **extra,
    )
