"""The ``python`` grader's sandbox: user ``grade(sample, item)`` in limited worker processes.

Covers:
- a working grader sees OpenAI's ``sample``/``item`` shapes and its result is clamped to [0, 1];
- an infinite loop, a sleep, a memory bomb, a network call, a subprocess, libc through ctypes,
  ``_posixsubprocess``, reading the operator's /proc environ (directly or through a symlink), an
  exception, a non-number, NaN, a hard exit and code that fails to load each give score 0 with a
  reason, within their limits (``on_error: fail`` makes them failed gradings instead);
- the network stays blocked with the in-process audit hook alone (no namespaces);
- workers are reused across episodes (no process per episode), never more than ``workers`` at once,
  replaced after a failure, and killed by ``aclose``; a batch with bad episodes goes on;
- the worker gets none of our environment (no secrets).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lightning_op import graders
from lightning_op.api import episode as ep
from lightning_op.graders import python_grader

LIMITS = {"cpu_seconds": 1, "memory_mb": 256, "timeout_s": 4}


def make_episode(query: str = "weather in Paris?", tool: str = "get_weather") -> ep.Episode:
    return ep.Episode.model_validate(
        {
            "agentId": "agent",
            "state": {"query": query, "context": {"expected_tool": "get_weather"}},
            "action": {"tool": tool, "arguments": {"city": "Paris"}},
        }
    )


def build(source: str, **extra: Any) -> Any:
    data = {"type": "python", "name": "py", "source": source, "limits": LIMITS, **extra}
    return graders.build_grader(graders.load_grader_spec(data))


async def grade_once(source: str, episode: ep.Episode | None = None, **extra: Any) -> graders.GradeResult:
    grader = build(source, **extra)
    try:
        return await grader.grade(episode or make_episode())
    finally:
        await grader.aclose()


async def test_a_working_grader_sees_sample_and_item() -> None:
    source = """
def grade(sample, item):
    expected = item["state"]["context"]["expected_tool"]
    called = sample["output_json"]["tool"]
    assert sample["output_tools"][0]["function"]["name"] == called
    assert item["agentId"] == "agent"
    return 1.0 if called == expected else 0.0
"""
    assert (await grade_once(source)).score == 1.0
    assert (await grade_once(source, make_episode(tool="search"))).score == 0.0


@pytest.mark.parametrize(
    ("returned", "expected", "note"),
    [("0.25", 0.25, ""), ("7", 1.0, "clamped to 1"), ("-2", 0.0, "clamped to 0"), ("True", 1.0, "")],
    ids=["float", "above", "below", "bool"],
)
async def test_results_are_clamped_to_the_unit_interval(returned: str, expected: float, note: str) -> None:
    result = await grade_once(f"def grade(sample, item):\n    return {returned}\n")
    assert result.ok and result.score == expected and note in result.reason


FAILURES = [
    (
        "infinite-loop",
        "CPU time limit (1s) exceeded",
        4.0,
        """
def grade(sample, item):
    while True:
        pass
""",
    ),
    (
        "loop-swallowing-errors",
        "exceeded",
        4.0,
        """
def grade(sample, item):
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
""",
    ),
    (
        "sleep",
        "wall-clock limit (4s) exceeded",
        4.0,
        """
import time
def grade(sample, item):
    time.sleep(60)
""",
    ),
    (
        "memory-bomb",
        "memory limit (256 MiB) exceeded",
        2.0,
        """
def grade(sample, item):
    x = bytearray(8 * 1024**3)
    return 1
""",
    ),
    (
        "memory-creep",
        "memory limit (256 MiB) exceeded",
        2.5,
        """
def grade(sample, item):
    blocks = []
    while True:
        blocks.append(bytearray(10**7))
""",
    ),
    (
        "network",
        "network access is blocked",
        2.0,
        """
import urllib.request
def grade(sample, item):
    urllib.request.urlopen("http://1.1.1.1", timeout=1)
    return 1
""",
    ),
    (
        "raw-socket",
        "network access is blocked",
        2.0,
        """
import socket
def grade(sample, item):
    socket.create_connection(("127.0.0.1", 9))
    return 1
""",
    ),
    (
        "subprocess",
        "subprocess.Popen is blocked",
        2.0,
        """
import subprocess
def grade(sample, item):
    return float(subprocess.check_output(["echo", "1"]))
""",
    ),
    (
        "ctypes-libc",
        "importing ctypes is blocked",
        2.0,
        """
def grade(sample, item):
    import ctypes
    return float(ctypes.CDLL(None).system(b"echo pwned > /tmp/lightning-op-sandbox-pwned"))
""",
    ),
    (
        "fork-exec",
        "_posixsubprocess.fork_exec is blocked",
        2.0,
        """
import _posixsubprocess, importlib
def grade(sample, item):
    module = importlib.reload(_posixsubprocess)
    return module.fork_exec()  # the real one would raise TypeError (arguments), not "blocked"
""",
    ),
    (
        "operator-environ",
        "reading other processes' /proc files is blocked",
        2.0,
        """
import os
def grade(sample, item):
    secrets = open(f"/proc/{os.getppid()}/environ", "rb").read()
    return 1 if secrets else 0
""",
    ),
    (
        "operator-environ-via-symlink",
        "reading other processes' /proc files is blocked",
        2.0,
        """
import os, tempfile
def grade(sample, item):
    link = os.path.join(tempfile.mkdtemp(), "env")
    os.symlink(f"/proc/{os.getppid()}/environ", link)
    return 1 if open(link, "rb").read() else 0
""",
    ),
    (
        "exception",
        "ValueError: boom (line 3)",
        2.0,
        """
def grade(sample, item):
    raise ValueError("boom")
""",
    ),
    (
        "non-number",
        "grade returned str, not a number",
        2.0,
        """
def grade(sample, item):
    return "high"
""",
    ),
    (
        "nan",
        "grade returned nan",
        2.0,
        """
def grade(sample, item):
    return float("nan")
""",
    ),
    (
        "hard-exit",
        "worker exited (exit status 3)",
        2.0,
        """
import os
def grade(sample, item):
    os._exit(3)
""",
    ),
    (
        "kill-parent",
        "os.kill is blocked",
        2.0,
        """
import os
def grade(sample, item):
    os.kill(os.getppid(), 9)
""",
    ),
    (
        "load-error",
        "failed to load: ModuleNotFoundError",
        2.0,
        """
import no_such_module
def grade(sample, item):
    return 1
""",
    ),
]


@pytest.mark.parametrize(
    ("reason", "within", "source"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_failures_score_zero_with_a_reason_within_limits(
    reason: str, within: float, source: str
) -> None:
    start = time.perf_counter()
    result = await grade_once(source)
    elapsed = time.perf_counter() - start
    assert result.score == 0.0 and result.error is None, result
    assert result.reason.startswith("python grader error: ") and reason in result.reason, result.reason
    # ``within`` is the limit that must stop it (CPU-bound loops: 1 s of CPU, at worst the 4 s wall
    # clock on a loaded machine), plus time for the worker to start.
    assert elapsed < within + 1.0


async def test_on_error_fail_makes_failed_gradings() -> None:
    result = await grade_once("def grade(sample, item):\n    raise KeyError('x')\n", on_error="fail")
    assert result.score is None and "KeyError" in (result.error or "")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        pytest.param(
            "import socket\ndef grade(sample, item):\n    socket.socket()\n    return 1\n",
            "network access is blocked",
            id="socket",
        ),
        pytest.param(
            "def grade(sample, item):\n    import ctypes\n    return 1\n",
            "importing ctypes is blocked",
            id="libc-socket-through-ctypes",
        ),
        pytest.param(
            "import os\ndef grade(sample, item):\n    return len(open(f'/proc/{os.getppid()}/environ').read())\n",  # noqa: E501
            "/proc files is blocked",
            id="operator-environ",
        ),
    ],
)
async def test_network_and_secrets_are_blocked_by_the_audit_hook_alone(
    monkeypatch: pytest.MonkeyPatch, source: str, reason: str
) -> None:
    """Where no namespace can be made (a non-root operator pod), the audit hook is all there is."""
    monkeypatch.setattr(python_grader, "_unshare_prefix", ())
    result = await grade_once(source)
    assert result.score == 0.0 and reason in result.reason, result.reason
    assert python_grader.network_isolation() == "audit hook only"


async def test_workers_are_reused_bounded_and_replaced_after_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned: list[int] = []
    original = python_grader.PythonGrader._spawn

    async def counting_spawn(self: python_grader.PythonGrader) -> Any:
        worker = await original(self)
        spawned.append(worker.proc.pid)
        return worker

    monkeypatch.setattr(python_grader.PythonGrader, "_spawn", counting_spawn)
    source = """
def grade(sample, item):
    query = item["state"]["query"]
    if "bad" in query:
        raise RuntimeError("bad episode")
    if "text" in query:
        return "not a number"
    return 0.5
"""
    grader = build(source, workers=2)
    good = [make_episode(f"weather {i}") for i in range(40)]
    results = await asyncio.gather(*(grader.grade(e) for e in good))
    assert all(r.score == 0.5 for r in results)
    assert len(spawned) <= 2
    mixed = [make_episode("bad one"), make_episode("fine"), make_episode("text"), make_episode("fine again")]
    results = [await grader.grade(e) for e in mixed]
    assert [r.score for r in results] == [0.0, 0.5, 0.0, 0.5]
    assert "bad episode" in results[0].reason and "not a number" in results[2].reason
    assert len(spawned) <= 4  # each failure retired its worker; the next call started a fresh one
    pids = list(spawned)
    await grader.aclose()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_the_worker_gets_none_of_our_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    source = (
        "import os\ndef grade(sample, item):\n    return 1.0 if 'OPENAI_API_KEY' in os.environ else 0.0\n"
    )
    assert (await grade_once(source)).score == 0.0


async def test_grader_code_from_a_file(tmp_path: Path) -> None:
    code = tmp_path / "my_grader.py"
    code.write_text("def grade(sample, item):\n    return len(item['state']['query']) / 100\n")
    spec_file = tmp_path / "grader.yaml"
    spec_file.write_text("type: python\nname: length\nfile: my_grader.py\nlimits: {timeout_s: 5}\n")
    grader = graders.build_grader(graders.load_grader_spec(spec_file))
    try:
        result = await grader.grade(make_episode("x" * 42))
    finally:
        await grader.aclose()
    assert result.score == pytest.approx(0.42)
