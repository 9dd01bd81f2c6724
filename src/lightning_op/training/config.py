"""The local trainer's configuration: one YAML/JSON file per training round.

``python -m lightning_op.trainer --config FILE`` reads it (the trainer image mounts it from a
ConfigMap; ``start-training`` writes it next to the dataset). Keys are camelCase like the
FineTuneJob CRD (``baseModel``, ``hyperparameters.learningRate``); Python attributes are snake_case.
Relative paths in the file are resolved against the file's directory, so a config and its dataset
can move together. ``load_config`` raises ``ConfigError`` with the offending field named
(``hyperparameters.learningRate: Input should be greater than 0``).

Only the shape lives here; ``training.local`` trains from it and ``training.evaluate`` scores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

#: LoRA target modules for architectures we know, by ``config.model_type``: every linear projection
#: of attention and MLP (QLoRA's finding: adapting all of them beats attention-only at equal rank).
TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class ConfigError(ValueError):
    """The trainer config is missing, unreadable or invalid; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Hyperparameters(_Model):
    """How to train: the FineTuneJob's ``spec.hyperparameters`` plus the trainer-only knobs."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 3
    learning_rate: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 2e-4
    #: micro-batch: rows per forward pass (packed rows of ``maxSeqLength`` tokens when ``packing``)
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    gradient_accumulation: Annotated[int, Field(ge=1, le=4096)] = 1
    lora_rank: Annotated[int, Field(ge=1, le=1024)] = 16
    lora_alpha: Annotated[int, Field(ge=1, le=65_536)] = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    #: module names to adapt; ``None`` picks them from the model's architecture (``TARGET_MODULES``)
    target_modules: list[Annotated[str, Field(min_length=1)]] | None = None
    max_seq_length: Annotated[int, Field(ge=8, le=131_072)] = 1024
    seed: int = 42
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    #: concatenate examples into rows of ``maxSeqLength`` (no pad tokens computed); else pad per batch
    packing: bool = True
    #: save a resumable checkpoint every N optimizer steps (0: only on SIGTERM and at the end)
    checkpoint_steps: Annotated[int, Field(ge=0)] = 50
    #: validation loss every N optimizer steps (0: only at epoch ends)
    eval_steps: Annotated[int, Field(ge=0)] = 0
    #: stop after this many optimizer steps (the schedule is planned for it)
    max_steps: Annotated[int, Field(ge=1)] | None = None
    gradient_checkpointing: bool = False


class EvaluationConfig(_Model):
    """How to score the adapter after training: greedy generation on held-out rows, then a grader."""

    #: a grader spec (dict, as in a RewardLabeling's ``spec.grader``) or a preset name
    grader_spec: dict[str, Any] | Annotated[str, Field(min_length=1)] = "tool_selection"
    #: chat-format JSONL; defaults to the config's ``validationFile``
    eval_file: Path | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 128
    #: score at most this many rows (the first N, file order)
    limit: Annotated[int, Field(ge=1)] | None = None
    #: prompts per generation batch
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16


class TrainerConfig(_Model):
    """One training round: base model, data, output, hyperparameters and optional evaluation."""

    #: a local directory loadable by ``AutoModelForCausalLM.from_pretrained`` (no hub access)
    base_model: Path
    train_file: Path
    validation_file: Path | None = None
    output_dir: Path
    #: ``auto``: the last checkpoint in ``outputDir/checkpoints`` if any; or a checkpoint directory
    resume_from: Literal["auto"] | Path | None = None
    #: defaults to ``outputDir/status.json``
    status_file: Path | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    evaluation: EvaluationConfig | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    round: Annotated[int, Field(ge=1)] = 1
    #: start from a previous round's adapter directory instead of a fresh LoRA
    init_adapter: Path | None = None

    @model_validator(mode="after")
    def _eval_needs_data(self) -> TrainerConfig:
        if self.evaluation is not None and self.evaluation.eval_file is None and self.validation_file is None:
            raise ValueError("evaluation needs evaluation.evalFile or validationFile")
        return self

    @property
    def status_path(self) -> Path:
        return self.status_file if self.status_file is not None else self.output_dir / "status.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        """Where the final adapter is saved (``save_pretrained`` layout, loadable by peft)."""
        return self.output_dir / "adapter"

    @property
    def eval_path(self) -> Path | None:
        if self.evaluation is None:
            return None
        return self.evaluation.eval_file or self.validation_file

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:8]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(config)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def parse_config(data: Any, *, base_dir: Path | None = None, source: str = "trainer config") -> TrainerConfig:
    """Validate a config mapping; relative paths are taken against ``base_dir`` when given."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = TrainerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_validation_error(exc)}") from None
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def _resolve_paths(config: TrainerConfig, base: Path) -> TrainerConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    updates: dict[str, Any] = {}
    for name in ("base_model", "train_file", "validation_file", "output_dir", "status_file", "init_adapter"):
        value = getattr(config, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = fix(value)
    if isinstance(config.resume_from, Path) and not config.resume_from.is_absolute():
        updates["resume_from"] = fix(config.resume_from)
    if config.evaluation is not None and config.evaluation.eval_file is not None:
        evaluation = config.evaluation.model_copy(update={"eval_file": fix(config.evaluation.eval_file)})
        updates["evaluation"] = evaluation
    return config.model_copy(update=updates)


def load_config(path: str | Path) -> TrainerConfig:
    """Read a trainer config from YAML or JSON (by content: JSON is YAML); errors name the field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"trainer config {p}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"trainer config {p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    return parse_config(data, base_dir=p.resolve().parent, source=f"trainer config {p}")
