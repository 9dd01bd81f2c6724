"""Where a training step's time goes on a GPU: a diagnostic for ``bench_trainer.py --config gpu``.

Not a benchmark (no baseline): it explains one. For the same model, data and batch plan as the
benchmark's ``gpu`` config it prints

- our trainer's steady tokens/s and step time at 2, 4 and 8 packed rows per step: if a step's time
  barely grows with its rows, a fixed per-step cost (host-side dispatch) dominates, not the GPU;
- a ``torch.profiler`` window of a few steps at the benchmark's rows per step: CUDA kernels
  launched per step, the GPU's busy time per step against the step's wall time, and the ops that
  take the most host and device time.

With ``--compile-layers`` it instead runs the benchmark's plan twice, eager and with every decoder
layer of the peft model compiled (``layer.compile()``; the packed-sequence mask is built outside the
layers), and prints both steady rates, the compiled run's wall time (compiling included) and the
largest difference between the two runs' losses. A probe of the next lever, not a trainer option.

    python bench/profile_trainer.py [--config gpu] [--steps N] [--compile-layers]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_trainer as bt  # noqa: E402


def _steady(events: list[dict[str, Any]]) -> tuple[float, float]:
    steps = [e for e in events if e["event"] == "progress" and e.get("loss") is not None]
    rate = bt._steady_rate([e["time"] for e in steps], [e["tokens"] for e in steps])
    w = min(bt.WARMUP_STEPS, len(steps) - 2)
    per_step = (steps[-1]["time"] - steps[w]["time"]) / max(1, len(steps) - 1 - w)
    return rate, per_step


@contextlib.contextmanager
def compiled_layers() -> Iterator[None]:
    """Our trainer, with each decoder layer of the model it loads compiled, while in the block."""
    from lightning_op.training import local

    load = local.load_for_training

    def load_compiled(config: Any, device: Any) -> Any:
        loaded = load(config, device)
        for layer in loaded.model.get_base_model().model.layers:
            layer.compile()
        return loaded

    local.load_for_training = load_compiled
    try:
        yield
    finally:
        local.load_for_training = load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(bt.CONFIGS), default="gpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile-layers", action="store_true", help="eager against compiled layers")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from lightning_op.training import local

    spec = bt.CONFIGS[args.config]
    rows_data, examples, _, _, per_token = bt.describe(args.config)
    mean_len = sum(len(e) for e in examples) / len(examples)
    bench_rows = bt.packed_rows(spec, mean_len)
    cuda = torch.cuda.is_available()
    peak = bt.gpu_peak_tflops(None)
    with tempfile.TemporaryDirectory(prefix="profile-trainer-") as tmp:
        root = Path(tmp)
        model_dir = bt.build_model_dir(args.config, root)
        data_path = root / "train.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in rows_data))

        def run(rows: int, steps: int, writer: type[local.ProgressWriter]) -> list[dict[str, Any]]:
            """Our trainer on the benchmark's data at ``rows`` per step; its JSON events."""
            stream = io.StringIO()
            args = {"model": model_dir, "data": data_path, "out": root / f"out-{rows}", "steps": steps}
            args.update(packed_batch=rows, seq=spec["seq"], lora_rank=spec["lora_rank"])
            local.train(bt.ours_config(args), writer=writer(None, stream=stream), handle_sigterm=False)
            if cuda:
                torch.cuda.empty_cache()
            return [json.loads(line) for line in stream.getvalue().splitlines()]

        print(f"benchmark plan: {bench_rows} packed row(s) of {spec['seq']} per step")
        if args.compile_layers:
            losses: dict[str, list[float]] = {}
            for name in ("eager", "compiled"):
                started = time.perf_counter()
                with compiled_layers() if name == "compiled" else contextlib.nullcontext():
                    events = run(bench_rows, args.steps, local.ProgressWriter)
                rate, per_step = _steady(events)
                losses[name] = [e["loss"] for e in events if e["event"] == "progress" and e.get("loss")]
                print(
                    f"{name}: {rate:,.0f} non-pad tokens/s, {1000 * per_step:.0f} ms per step, "
                    f"run {time.perf_counter() - started:.1f} s"
                )
            diff = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"], strict=True))
            print(f"largest loss difference over {len(losses['eager'])} steps: {diff:.2e}")
            return 0
        step_ms: dict[int, float] = {}
        for rows in sorted({bench_rows, 2 * bench_rows, 4 * bench_rows}):
            rate, per_step = _steady(run(rows, args.steps, local.ProgressWriter))
            step_ms[rows] = 1000 * per_step
            print(
                f"rows {rows}: {rate:,.0f} non-pad tokens/s, {1000 * per_step:.0f} ms per step"
                + (f", MFU {100 * rate * per_token / (peak * 1e12):.1f}%" if peak else "")
            )

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        active = 5
        with profile(activities=activities, schedule=schedule(wait=4, warmup=2, active=active)) as prof:

            class Stepper(local.ProgressWriter):
                def emit(self, event: str, **fields: Any) -> dict[str, Any]:
                    if event == "progress":
                        prof.step()
                    return super().emit(event, **fields)

            started = time.perf_counter()
            run(bench_rows, 4 + 2 + active + 1, Stepper)
            print(f"profiled run: {time.perf_counter() - started:.1f} s")
        averages = prof.key_averages()

        # Device-side events but the profiler's own step annotations (which span whole steps), as
        # the table's "Self CUDA time total" counts them.
        def on_device(e: Any) -> bool:
            return str(e.device_type).endswith("CUDA") and not getattr(e, "is_user_annotation", False)

        kernels = [e for e in prof.events() if on_device(e)]
        busy_us = sum(e.self_device_time_total for e in averages if on_device(e))
        print(
            f"profiled window ({active} steps at {bench_rows} rows): "
            f"{len(kernels) / active:,.0f} CUDA kernels per step; GPU busy {busy_us / active / 1000:.0f} ms "
            f"per step against {step_ms[bench_rows]:.0f} ms of wall time per step unprofiled"
        )
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(averages.table(sort_by=sort, row_limit=15, max_name_column_width=60))
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
