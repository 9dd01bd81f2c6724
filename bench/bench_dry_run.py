"""Benchmark: a 200-sample dry run with an LLM judge, concurrent (16) vs sequential, in one run.

The judge is ``lightning_op.testing.judge_server`` started as a separate process (so it does not share
this process's CPU and GIL), answering every request after 50 ms, like a fast hosted model. The
grader is a ``score_model`` spec called through the openai SDK over real HTTP; the store is SQLite
with 1,000 episodes. Both dry runs grade the same seeded sample. Prints both times, the ratio
(target: at least 10x) and one summary line.

    .venv/bin/python bench/bench_dry_run.py [--sample-size 200] [--latency-ms 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lightning_op import graders
from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.pipeline import labeling

TARGET_RATIO = 10.0
TOOLS = ["get_weather", "search_docs", "lookup_order", "send_email"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_episodes(count: int) -> list[ep.Episode]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        ep.Episode(
            agent_id="bench",
            session_id=f"s-{i}",
            turn=0,
            timestamp=t0 + timedelta(seconds=i),
            state=ep.State(
                query=f"what is the weather in city {i}?", context={"expected_tool": TOOLS[i % 4]}
            ),
            action=ep.Action(tool=TOOLS[(i * 7) % 4], arguments={"city": f"city {i}"}),
        )
        for i in range(count)
    ]


def start_judge(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    judge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lightning_op.testing.judge_server",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert judge.stdout is not None
    line = judge.stdout.readline()
    if "listening on" not in line:
        judge.kill()
        raise SystemExit(f"judge server did not start: {line!r}")
    return judge, line.split()[-1]


async def timed_dry_run(
    store_url: str, base_url: str, sample_size: int, concurrency: int
) -> tuple[float, int, float]:
    spec = graders.load_grader_spec(
        {
            "type": "score_model",
            "name": "bench-judge",
            "model": "judge-test",
            "base_url": base_url,
            "range": [0, 10],
            "input": [
                {"role": "system", "content": "Rate the agent's tool choice from 0 to 10."},
                {"role": "user", "content": "Query: {{episode.state.query}}\nAgent: {{sample.output_text}}"},
            ],
        }
    )
    grader = graders.build_grader(spec)
    store = store_mod.open_store(store_url)
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        result = await labeling.dry_run(store, grader, "bench", sample_size, concurrency=concurrency)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await grader.aclose()
        store.close()
    if result.metrics.failed:
        raise SystemExit(f"{result.metrics.failed} gradings failed: {result.records[0].error}")
    return elapsed, result.metrics.count, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sample-size", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=labeling.DEFAULT_CONCURRENCY)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = store_mod.open_store(store_url)
        store.insert_many(make_episodes(1000))
        store.close()
        judge, base_url = start_judge(args.latency_ms)
        try:
            # Warm-up: imports, the SDK client, the connection pool.
            asyncio.run(timed_dry_run(store_url, base_url, 4, 4))
            sequential, n_seq, _ = asyncio.run(timed_dry_run(store_url, base_url, args.sample_size, 1))
            concurrent, n_con, cpu_con = asyncio.run(
                timed_dry_run(store_url, base_url, args.sample_size, args.concurrency)
            )
        finally:
            judge.terminate()
            judge.wait(timeout=30)

    ratio = sequential / concurrent
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, python {platform.python_version()}")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    print(f"judge latency: {args.latency_ms:g} ms per request, {args.sample_size} samples")
    print(f"sequential (concurrency 1): {sequential:.2f}s ({n_seq / sequential:.1f} samples/s)")
    print(
        f"concurrent (concurrency {args.concurrency}): {concurrent:.2f}s "
        f"({n_con / concurrent:.1f} samples/s; client CPU {cpu_con / n_con * 1000:.1f} ms per sample)"
    )
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(
        f"bench_dry_run: {args.sample_size}-sample dry run, {args.latency_ms:g} ms judge: "
        f"{ratio:.1f}x faster at concurrency {args.concurrency} (target >= {TARGET_RATIO:g}x) {verdict}"
    )
    if ratio < TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()
