"""Collector ingest throughput over HTTP on loopback: batches of episodes vs one episode per request.

Starts ``lightning-op collector`` as a real process on a fresh SQLite store, then a load generator in
a separate process (aiohttp, N concurrent connections) that posts ~1 KB episodes with unique ids for a
fixed time, first in batches (100 per request by default), then one per request (the baseline, with
the same connections). Only acknowledged episodes count, and the store's count is checked against
them at the end. Prints both rates, their ratio and one summary line:

    collector: NNNNN eps/s (batched) vs NNN eps/s (one per request) ratio=NNx

The machine may be shared with other work, which stretches wall-clock rates; so the collector
process's own CPU time is measured too (from /proc) and the same figures are printed per CPU second.
The one-per-request baseline still profits from group commit across its concurrent connections.

Run: ``.venv/bin/python bench/bench_collector.py [--seconds 12] [--baseline-seconds 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"collector listening on (http://\S+)")


def episode_template() -> bytes:
    """One episode of about 1 KB as JSON, with ``@ID@``, ``@SESSION@`` and ``@TURN@`` placeholders."""
    episode: dict[str, Any] = {
        "id": "@ID@",
        "agentId": "bench-agent",
        "sessionId": "@SESSION@",
        "turn": 12345678,
        "timestamp": "2026-01-15T10:30:00+00:00",
        "modelVersion": "base-v1",
        "state": {
            "query": "What will the weather be like in Paris tomorrow morning, and should I take an "
            "umbrella to the 9 o'clock meeting at the office near the river?",
            "context": {
                "locale": "en-GB",
                "plan": "standard",
                "history": ["asked about trains to Lyon", "asked for a hotel near Gare de Lyon"],
                "retrieved": [
                    {"doc": "weather-api-guide", "score": 0.82},
                    {"doc": "city-codes", "score": 0.41},
                ],
            },
        },
        "action": {
            "tool": "get_weather_forecast",
            "arguments": {"city": "Paris", "country": "FR", "when": "tomorrow", "hours": [7, 8, 9, 10]},
        },
        "result": {
            "forecast": "light rain until 10:00, then clearing; highs of 17C, lows of 11C",
            "precipitation_mm": 2.4,
            "wind_kmh": 14,
            "advice": "Take an umbrella for the morning; the afternoon should be dry with some sun. "
            "Expect busy roads around the river between 8 and 9, and allow ten extra minutes for the "
            "metro: line 4 runs a reduced service until noon.",
        },
    }
    text = json.dumps(episode, separators=(",", ":"))
    return text.replace('"turn":12345678', '"turn":@TURN@').encode()


# --- load generator (runs in its own process) ------------------------------------------------------


async def generate(url: str, batch: int, concurrency: int, seconds: float, prefix: str) -> dict[str, Any]:
    import aiohttp

    head, _, rest = episode_template().partition(b"@ID@")
    middle, _, rest = rest.partition(b"@SESSION@")
    turn_head, _, tail = rest.partition(b"@TURN@")
    stats = {"episodes": 0, "requests": 0, "errors": 0, "statuses": {}}
    deadline = time.perf_counter() + seconds

    def body(worker: int, start: int) -> bytes:
        parts = []
        for seq in range(start, start + batch):
            ident = f"{prefix}-{worker}-{seq}".encode()
            turn = str(seq % 1000).encode()
            parts.append(head + ident + middle + ident + turn_head + turn + tail)
        return b"[" + b",".join(parts) + b"]"

    async def worker(session: aiohttp.ClientSession, number: int) -> None:
        seq = 0
        while time.perf_counter() < deadline:
            payload = body(number, seq)
            seq += batch
            try:
                async with session.post(
                    url, data=payload, headers={"Content-Type": "application/json"}
                ) as resp:
                    data = await resp.read()
                    key = str(resp.status)
                    stats["statuses"][key] = stats["statuses"].get(key, 0) + 1
                    if resp.status == 200:
                        stats["episodes"] += json.loads(data)["accepted"]
                        stats["requests"] += 1
                    elif resp.status in (429, 503):
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "0.1")) / 10)
            except aiohttp.ClientError:
                stats["errors"] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
        stats["seconds"] = time.perf_counter() - started
    return stats


# --- driver ---------------------------------------------------------------------------------------


def start_collector(store_url: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_op.cli", "collector", "--store", store_url, "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            match = LISTENING.search(line)
            if match and not url:
                url.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(60) or not url:
        proc.kill()
        raise SystemExit("collector did not start:\n" + "".join(lines))
    return proc, url[0], lines


def run_load(url: str, batch: int, concurrency: int, seconds: float, prefix: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
            "--batch",
            str(batch),
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
            "--prefix",
            prefix,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="batched phase duration")
    parser.add_argument("--baseline-seconds", type=float, default=6.0, help="one-per-request phase duration")
    parser.add_argument("--batch", type=int, default=100, help="episodes per request in the batched phase")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="b", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.load:
        print(
            json.dumps(
                asyncio.run(generate(args.load, args.batch, args.concurrency, args.seconds, args.prefix))
            )
        )
        return

    sys.path.insert(0, str(REPO / "src"))
    from lightning_op import store as store_mod

    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, python {sys.version.split()[0]}")
    print(f"episode size: {len(episode_template())} bytes of JSON")
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        store_url = f"sqlite:///{Path(tmp) / 'episodes.db'}"
        proc, url, log_lines = start_collector(store_url)
        endpoint = f"{url}/v1/episodes"
        try:
            run_load(endpoint, args.batch, args.concurrency, 1.0, "warmup")
            before = cpu_seconds(proc.pid)
            batched = run_load(endpoint, args.batch, args.concurrency, args.seconds, "batched")
            middle = cpu_seconds(proc.pid)
            single = run_load(endpoint, 1, args.concurrency, args.baseline_seconds, "single")
            after = cpu_seconds(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        if code != 0:
            raise SystemExit(f"collector exited {code}:\n" + "".join(log_lines))
        store = store_mod.open_store(store_url)
        try:
            stored = store.count(agent_id="bench-agent")
        finally:
            store.close()

    expected_min = batched["episodes"] + single["episodes"]
    if stored < expected_min:
        raise SystemExit(f"store holds {stored} episodes, fewer than the {expected_min} acknowledged")
    rate_batched = batched["episodes"] / batched["seconds"]
    rate_single = single["episodes"] / single["seconds"]
    for name, phase, rate in (("batched", batched, rate_batched), ("one per request", single, rate_single)):
        print(
            f"{name:>16}: {phase['episodes']:>8} episodes in {phase['seconds']:.1f} s = {rate:>9.0f} eps/s "
            f"({phase['requests']} requests, statuses {phase['statuses']}, {phase['errors']} errors)"
        )
    print(f"store: {stored} episodes stored (>= {expected_min} acknowledged)")
    # The machine may be shared: CPU time per episode does not depend on what else runs.
    cpu_batched, cpu_single = middle - before, after - middle
    for name, phase, cpu in (("batched", batched, cpu_batched), ("one per request", single, cpu_single)):
        per = cpu / phase["episodes"] * 1e6 if phase["episodes"] else float("nan")
        print(f"{name:>16}: collector used {cpu:.1f} CPU-s, {per:.0f} us of CPU per episode")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    per_cpu_batched = batched["episodes"] / cpu_batched if cpu_batched else float("inf")
    per_cpu_single = single["episodes"] / cpu_single if cpu_single else float("inf")
    print(
        f"collector (per CPU second): {per_cpu_batched:.0f} eps/s (batched) vs {per_cpu_single:.0f} eps/s "
        f"(one per request) ratio={per_cpu_batched / per_cpu_single:.0f}x"
    )
    ratio = rate_batched / rate_single if rate_single else float("inf")
    print(
        f"collector: {rate_batched:.0f} eps/s (batched) vs {rate_single:.0f} eps/s (one per request) "
        f"ratio={ratio:.0f}x"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
