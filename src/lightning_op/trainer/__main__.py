"""``python -m lightning_op.trainer``: train one round (then evaluate), or evaluate only.

Commands::

    python -m lightning_op.trainer --config FILE            # train; evaluate if the config says so
    python -m lightning_op.trainer train --config FILE      # the same
    python -m lightning_op.trainer evaluate --config FILE [--adapter DIR] [--output FILE] [--limit N]

``train`` writes JSON lines to stdout (``started``, ``progress``, ``checkpoint``, ``oom``, then
``completed`` or ``failed``), keeps the latest in the status file (``statusFile``, default
``outputDir/status.json``) and appends all to ``outputDir/progress.jsonl``. With ``evaluation`` in
the config, the adapter is scored right after training with the model still in memory, the
``completed`` line carries ``score`` and ``perMetric``, and ``outputDir/evaluation.json`` holds
every example. ``evaluate`` scores the base model (no ``--adapter``: the baseline) or an adapter and
prints one ``evaluated`` line; the full result goes to ``--output`` (default
``outputDir/evaluation-baseline.json`` or ``outputDir/evaluation-adapter.json``). Logs go to stderr.

Exit codes: 0 completed; 1 unexpected error; 2 bad config, grader spec or dataset (nothing was
trained); 3 diverged (NaN/Inf loss); 4 out of memory after halving the micro-batch 3 times;
5 trained but the evaluation failed (the adapter is saved), or ``evaluate`` could not score because
the grader's backend (an LLM judge) failed on every example; 143 stopped by SIGTERM after writing a
checkpoint (run again with ``resumeFrom: auto`` to continue).

This module talks to ``training`` (config, local, evaluate, data) and ``graders`` (to build the
grader named in ``evaluation.graderSpec``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_op.training import config as cfg

log = logging.getLogger("lightning_op.trainer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_op.trainer",
        description="Train a LoRA adapter on a chat-format JSONL dataset, or evaluate a model.",
    )
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train one round (the default command)")
    train.add_argument("--config", required=True, type=Path, help="trainer config (YAML or JSON)")
    evaluate = sub.add_parser("evaluate", help="score the base model or an adapter on the evaluation file")
    evaluate.add_argument("--config", required=True, type=Path, help="trainer config (YAML or JSON)")
    evaluate.add_argument(
        "--adapter", type=Path, default=None, help="adapter directory (default: base model)"
    )
    evaluate.add_argument("--output", type=Path, default=None, help="where to write the full result JSON")
    evaluate.add_argument("--limit", type=int, default=None, help="score at most this many rows")
    return parser


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def build_grader(source: dict[str, Any] | str) -> Any:
    """A grader from ``evaluation.graderSpec`` (a spec dict or a preset name / file path)."""
    from lightning_op import graders

    try:
        return graders.build_grader(graders.load_grader_spec(source))
    except (graders.GraderSpecError, graders.GraderBuildError) as exc:
        raise cfg.ConfigError(f"evaluation.graderSpec: {exc}") from None


def _eval_rows(config: cfg.TrainerConfig, limit: int | None) -> list[dict[str, Any]]:
    from lightning_op.training import data

    path = config.eval_path
    if path is None:
        raise cfg.ConfigError("evaluation: no evaluation.evalFile or validationFile to evaluate on")
    return data.read_rows(path, limit=limit)


def _close(grader: Any) -> None:
    import asyncio

    aclose = getattr(grader, "aclose", None)
    if aclose is not None:
        asyncio.run(aclose())


def run_train(config: cfg.TrainerConfig) -> int:
    from lightning_op.training import data, evaluate, local

    writer = local.default_writer(config)
    grader = None
    rows: list[dict[str, Any]] = []
    evaluation = config.evaluation
    if evaluation is not None:
        # A bad grader spec or evaluation file must fail before hours of training, not after.
        try:
            grader = build_grader(evaluation.grader_spec)
            rows = _eval_rows(config, evaluation.limit)
        except cfg.ConfigError as exc:
            local.fail(writer, local.Reason.INVALID_CONFIG, str(exc))
            return int(local.ExitCode.BAD_INPUT)
        except data.DatasetError as exc:
            local.fail(writer, local.Reason.INVALID_DATASET, str(exc), lines=exc.line_numbers)
            return int(local.ExitCode.BAD_INPUT)
    try:
        result = local.train(config, writer=writer, finish=False, keep_model=evaluation is not None)
    except local.TrainingFailed as exc:
        log.error("%s: %s", exc.reason.value, exc.message)
        return int(exc.exit_code)
    if evaluation is None or grader is None:
        local.completed(writer, result)
        return int(local.ExitCode.OK)
    writer.emit("evaluating", examples=len(rows), adapterPath=str(result.adapter_path))
    try:
        scored = evaluate.evaluate_loaded(
            result.model,
            result.tokenizer,
            rows,
            grader,
            evaluation.max_new_tokens,
            batch_size=evaluation.batch_size,
        )
        _close(grader)
    except Exception as exc:
        log.exception("evaluation failed")
        local.fail(
            writer,
            local.Reason.EVALUATION_FAILED,
            f"training completed but evaluation failed: {type(exc).__name__}: {exc}",
            adapterPath=str(result.adapter_path),
            trainLoss=result.train_loss,
            validLoss=result.valid_loss,
        )
        return int(local.ExitCode.EVALUATION_FAILED)
    evaluation_path = config.output_dir / "evaluation.json"
    local.write_json_atomic(
        evaluation_path, {"adapterPath": str(result.adapter_path), **scored.to_json_dict()}
    )
    local.completed(
        writer,
        result,
        score=scored.score,
        perMetric=scored.per_metric,
        evaluationPath=str(evaluation_path),
    )
    return int(local.ExitCode.OK)


def run_evaluate(
    config: cfg.TrainerConfig, adapter: Path | None, output: Path | None, limit: int | None
) -> int:
    from lightning_op.training import data, evaluate, local

    evaluation = config.evaluation or cfg.EvaluationConfig()
    try:
        grader = build_grader(evaluation.grader_spec)
        path = config.eval_path or config.validation_file
        if path is None:
            raise cfg.ConfigError(
                "evaluation.evalFile: no evaluation file (nor validationFile) in the config"
            )
        rows = data.read_rows(path, limit=limit or evaluation.limit)
        result = evaluate.evaluate_model(
            config.base_model,
            adapter,
            rows,
            grader,
            evaluation.max_new_tokens,
            batch_size=evaluation.batch_size,
            device=config.device,
        )
        _close(grader)
    except (cfg.ConfigError, data.DatasetError, FileNotFoundError) as exc:
        reason = (
            local.Reason.INVALID_DATASET
            if isinstance(exc, data.DatasetError)
            else local.Reason.INVALID_CONFIG
        )
        _emit({"event": "failed", "reason": reason.value, "message": str(exc), "exitCode": 2})
        log.error("%s", exc)
        return int(local.ExitCode.BAD_INPUT)
    except evaluate.EvaluationUnavailable as exc:
        code = local.ExitCode.EVALUATION_FAILED
        failed = {"reason": local.Reason.EVALUATION_FAILED.value, "message": str(exc), "exitCode": int(code)}
        _emit({"event": "failed", **failed})
        log.error("%s", exc)
        return int(code)
    default_name = "evaluation-adapter.json" if adapter is not None else "evaluation-baseline.json"
    out = output or config.output_dir / default_name
    payload = {"adapterPath": str(adapter) if adapter else None, **result.to_json_dict()}
    local.write_json_atomic(out, payload)
    _emit(
        {
            "event": "evaluated",
            "round": config.round,
            "adapterPath": payload["adapterPath"],
            "score": result.score,
            "perMetric": result.per_metric,
            "examples": len(result.per_example),
            "outputPath": str(out),
        }
    )
    return int(local.ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in ("train", "evaluate", "-h", "--help"):
        args_list.insert(0, "train")
    args = _parser().parse_args(args_list)
    if args.command is None:
        _parser().print_usage(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # No model hub: everything comes from local paths. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        config = cfg.load_config(args.config)
    except cfg.ConfigError as exc:
        _emit({"event": "failed", "reason": "InvalidConfig", "message": str(exc), "exitCode": 2})
        log.error("%s", exc)
        return 2
    if args.command == "evaluate":
        return run_evaluate(config, args.adapter, args.output, args.limit)
    return run_train(config)


if __name__ == "__main__":
    sys.exit(main())
