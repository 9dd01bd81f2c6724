"""``lightning-op demo --fast`` runs the closed loop end to end and ends with the contract line.

One real run (a process, as ``make demo`` starts it) in a temporary workdir: base model, collector and
model server processes, agent traffic through the capture client, labeling, dry run, dataset,
training rounds, promotion, replay, report.

Covers:
- the command exits 0 and its last line is exactly
  ``demo: tool-selection accuracy before=X.XX after=Y.YY threshold=0.75 rounds=N``;
- the agent got better: after > before, both measured in [0, 1], at least one round ran;
- every step printed its heading as it happened, stamped on the clock that the closing "finished in"
  line also reads, and the report it names exists with its plots;
- the workdir holds the store with the agent's episodes, labeled, split by model version;
- SIGTERM stops the demo (exit 143) and the collector and model server it started;
- a second run in the same workdir reuses the base model it built (the SIGTERM test runs there, so it
  reaches the services in seconds instead of after the pre-training; alone, it builds the model).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_op import store as store_mod
from lightning_op.pipeline import promotion

pytestmark = pytest.mark.slow

LAST_LINE = re.compile(
    r"^demo: tool-selection accuracy before=(\d\.\d\d) after=(\d\.\d\d) threshold=(\d\.\d\d) rounds=(\d+)$"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo workdir for the module: the base model the first run builds is reused by the next."""
    return tmp_path_factory.mktemp("demo")


@pytest.mark.timeout(400)
def test_demo_improves_the_agent_and_ends_with_the_summary_line(workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_op.cli", "demo", "--workdir", str(workdir), "--fast"],
        capture_output=True,
        text=True,
        timeout=380,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    match = LAST_LINE.match(lines[-1])
    assert match, f"last line is not the summary: {lines[-1]!r}"
    before, after, threshold, rounds = (float(match[1]), float(match[2]), float(match[3]), int(match[4]))
    assert 0.0 <= before < after <= 1.0, f"the agent did not improve: before={before} after={after}"
    assert threshold == 0.75
    assert rounds >= 1

    for heading in (
        "Build the agent's base model",
        "Start the collector",
        "Label the episodes",
        "Build the dataset",
        "Fine-tune",
        "Promote",
        "Replay",
        "Write the training report",
    ):
        assert heading in result.stdout, f"step {heading!r} was not printed"
    assert "verdict GO" in result.stdout
    stamps = [int(s) for s in re.findall(r"^\d+\. .*\((\d+)s\)$", result.stdout, re.MULTILINE)]
    (finished,) = (int(s) for s in re.findall(r"^finished in (\d+)s$", result.stdout, re.MULTILINE))
    assert len(stamps) >= 8 and stamps == sorted(stamps) and finished >= stamps[-1], "one clock for all"

    report = Path(re.findall(r"^report: (\S+)$", result.stdout, re.MULTILINE)[-1])
    assert report.is_file() and (report.parent / "rewards.png").is_file()

    store = store_mod.open_store(f"sqlite:///{workdir / 'episodes.db'}")
    try:
        comparison = promotion.compare_versions(store, "analytics-agent", "analytics-base", "analytics-tuned")
    finally:
        store.close()
    assert comparison.before.labeled > 0 and comparison.after.labeled > 0


@pytest.mark.timeout(200)
def test_sigterm_stops_the_demo_and_the_services_it_started(workdir: Path) -> None:
    """A terminated demo (a stopped container, ``kill``) exits 143 and stops its collector and model
    server, which run in sessions of their own (they were left running, orphaned)."""
    built = (workdir / "models").is_dir()
    import signal
    import socket
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_op.cli", "demo", "--workdir", str(workdir), "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    ports, seen = [], []
    for line in proc.stdout:
        seen.append(line)
        ports += [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", line)]
        if len(ports) == 2:  # the collector's and the model server's, printed by step 2
            break
    assert len(ports) == 2, "".join(seen)
    if built:
        assert any("reusing" in line and "(same settings)" in line for line in seen), "".join(seen)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "error: terminated" in err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        still = []
        for port in ports:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    still.append(port)
        if not still:
            break
        time.sleep(0.5)
    assert not still, f"services still listening on {still}"
