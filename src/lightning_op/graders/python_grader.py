"""The ``python`` grader: user ``grade(sample, item) -> float`` run in sandboxed worker processes.

Each grader keeps up to ``workers`` long-lived worker processes (``_sandbox_worker.py``), started on
first use, each loading the user's code once and then grading episode after episode over a pipe, so
labeling thousands of episodes costs one JSON round trip per episode, not one process. A worker that
fails in any way (exception, limit, crash, timeout) is killed and replaced by a fresh one on the next
call, so state a bad call left behind never leaks into the next; workers are also replaced after
``MAX_CALLS_PER_WORKER`` calls or when their CPU lifetime is spent.

``sample`` is ``{"output_text", "output_json", "output_tools"}`` and ``item`` the episode as JSON
(camelCase), as OpenAI's python graders see them. A number is clamped to [0, 1] (with a note); a
bool counts as 1/0. An exception, a non-number, NaN, a limit or a crash gives score 0 with the reason
(``on_error: zero``, OpenAI's behaviour) or a failed grading (``on_error: fail``); the batch goes on.

What the sandbox guarantees, and how strongly:

- **Wall-clock** (``limits.timeout_s``): enforced by this process, which kills the worker's whole
  process group. Always holds.
- **CPU time** (``limits.cpu_seconds``): ``RLIMIT_CPU`` soft limit per call, ``SIGXCPU`` raises in the
  user's code; code stuck inside one C call is stopped by the wall clock instead.
- **Memory** (``limits.memory_mb``): ``RLIMIT_AS`` on the worker (address space, so it also counts
  mapped-but-unused memory; allocations past it raise ``MemoryError``).
- **No network**: where ``unshare`` works (Linux with unprivileged user namespaces, or root), the
  worker runs in a new network namespace with only a down loopback, and a new PID namespace (it
  cannot see or signal other processes). Always, in addition, an audit hook (which Python code cannot
  remove) refuses socket creation and use, subprocesses, fork/exec, ``os.kill`` and ctypes library
  loading. Without namespaces the hook is the only fence: it stops Python-level access, but native
  code already loaded could still make system calls. ``network_isolation()`` says which applies.
- **Environment**: the worker gets a minimal environment (no API keys or other secrets from ours).

This is a fence against accidents and runaway graders, not a boundary against hostile code: the
worker runs as the same user and can read the files that user can (in a pod: the service-account
token). Run untrusted graders only where that is acceptable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning_op.graders import base, common, spec, templates

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("_sandbox_worker.py")
MAX_CALLS_PER_WORKER = 10_000
#: CPU seconds one worker may use over its life before it is replaced (beyond the per-call limit)
LIFETIME_CPU_SECONDS = 120.0
#: how long a worker may take to start and load the user's code, beyond the per-call timeout
STARTUP_GRACE_S = 10.0
_HEADER = struct.Struct(">I")
MAX_REPLY_BYTES = 1024 * 1024
#: env var that disables namespaces (``0``) for environments where probing them is unwanted
UNSHARE_ENV = "LIGHTNING_SANDBOX_UNSHARE"

_UNSHARE_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
    ("unshare", "--net", "--pid", "--fork", "--kill-child"),
    ("unshare", "--user", "--map-root-user", "--net"),
    ("unshare", "--net"),
)
_unshare_prefix: tuple[str, ...] | None = None
_unshare_lock: asyncio.Lock | None = None


async def _probe(prefix: tuple[str, ...]) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-I",
            "-c",
            "pass",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), 10) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


async def unshare_prefix() -> tuple[str, ...]:
    """The strongest ``unshare`` invocation that works here (probed once), or ``()``."""
    global _unshare_prefix, _unshare_lock
    if _unshare_prefix is not None:
        return _unshare_prefix
    if _unshare_lock is None:
        _unshare_lock = asyncio.Lock()
    async with _unshare_lock:
        if _unshare_prefix is None:
            chosen: tuple[str, ...] = ()
            if os.environ.get(UNSHARE_ENV, "1") != "0" and sys.platform.startswith("linux"):
                for candidate in _UNSHARE_CANDIDATES:
                    if await _probe(candidate):
                        chosen = candidate
                        break
            if not chosen:
                log.warning(
                    "python graders: no network namespace available (unshare failed); "
                    "network access is blocked by an in-process audit hook only"
                )
            _unshare_prefix = chosen
    return _unshare_prefix


def network_isolation() -> str:
    """How the sandbox keeps workers off the network, once a python grader has started one."""
    if _unshare_prefix is None:
        return "not probed yet"
    if not _unshare_prefix:
        return "audit hook only"
    pid = "--pid" in _unshare_prefix
    return "network namespace" + (" + PID namespace" if pid else "") + " + audit hook"


class WorkerError(Exception):
    """The worker died, hung or spoke nonsense; it must be replaced."""


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.calls = 0

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        data = json.dumps(message, ensure_ascii=False, default=str).encode()
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        try:
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerError(f"worker exited ({self._exit()})") from exc

    async def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            header = await self.proc.stdout.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_REPLY_BYTES:
                raise WorkerError(f"worker sent a {size}-byte reply")
            reply = json.loads(await self.proc.stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            await self._reap()
            raise WorkerError(f"worker exited ({self._exit()})") from None
        except ValueError as exc:
            raise WorkerError(f"worker sent an unreadable reply: {exc}") from None
        if not isinstance(reply, dict):
            raise WorkerError("worker sent an unreadable reply")
        return reply

    async def _reap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 1.0)

    def _exit(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        if code == 137:  # a PID-namespace init killed by SIGKILL reports through unshare as 128+9
            return "killed by SIGKILL"
        return f"exit status {code}"

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self._reap()


class PythonGrader(common.ContextGrader):
    kind = "python"

    def __init__(self, s: spec.PythonSpec, name: str, version: str) -> None:
        super().__init__(name, version)
        self.spec = s
        self.limits = s.limits
        if s.source is not None:
            self.source, self.filename = s.source, f"<grader {name}>"
        else:
            assert s.file is not None
            self.filename = s.file
            self.source = Path(s.file).read_text(encoding="utf-8")
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the user's code failed to load (a deterministic error): every call reports it, no respawns
        self._load_error: str | None = None
        self._closed = False

    # -- workers --

    async def _spawn(self) -> _Worker:
        prefix = await unshare_prefix()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-I",
            "-B",
            str(WORKER_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=tempfile.gettempdir(),
            start_new_session=True,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        try:
            await worker.send(
                {
                    "source": self.source,
                    "filename": self.filename,
                    "cpu_seconds": self.limits.cpu_seconds,
                    "memory_bytes": self.limits.memory_mb * 1024 * 1024,
                    "lifetime_cpu_seconds": LIFETIME_CPU_SECONDS + self.limits.cpu_seconds,
                }
            )
            reply = await asyncio.wait_for(worker.receive(), self.limits.timeout_s + STARTUP_GRACE_S)
        except (TimeoutError, WorkerError) as exc:
            await self._retire(worker)
            detail = "timed out loading the grader code" if isinstance(exc, TimeoutError) else str(exc)
            raise WorkerError(detail) from None
        if not reply.get("ready"):
            await self._retire(worker)
            self._load_error = f"grader code failed to load: {reply.get('error', 'unknown error')}"
            raise WorkerError(self._load_error)
        return worker

    def _adopt_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start over on a new event loop: workers' pipes belong to the loop that started them."""
        for worker in self._all:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
        self._all.clear()
        self._idle.clear()
        self._slots = asyncio.Semaphore(self.spec.workers)
        self._loop = loop

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()

    # -- grading --

    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult:
        if self._load_error is not None:
            return self._failure(self._load_error)
        if self._closed:
            return common.failed("grader is closed")
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._adopt_loop(loop)
        assert self._slots is not None
        request = {"sample": ctx.sample(), "item": ctx.item}
        async with self._slots:
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                try:
                    worker = await self._spawn()
                except WorkerError as exc:
                    return self._failure(str(exc))
            healthy = False
            try:
                await worker.send(request)
                reply = await asyncio.wait_for(worker.receive(), self.limits.timeout_s)
                worker.calls += 1
                healthy = bool(reply.get("ok")) and not reply.get("recycle")
            except TimeoutError:
                return self._failure(f"wall-clock limit ({self.limits.timeout_s:g}s) exceeded")
            except WorkerError as exc:
                return self._failure(f"sandbox worker failed: {exc}")
            finally:
                if healthy and worker.calls < MAX_CALLS_PER_WORKER and not self._closed:
                    self._idle.append(worker)
                else:
                    await self._retire(worker)
        if not reply.get("ok"):
            return self._failure(str(reply.get("error", "unknown error")))
        try:
            value, note = common.clamp_score(float(reply["score"]))
        except (KeyError, TypeError, ValueError):
            return self._failure(f"worker sent no usable score: {reply!r}")
        return base.GradeResult(value, reason=f"grade() returned {float(reply['score']):g}{note}")

    def _failure(self, why: str) -> base.GradeResult:
        reason = f"python grader error: {why}"
        if self.spec.on_error == "fail":
            return common.failed(reason)
        return base.GradeResult(0.0, reason=reason)

    async def aclose(self) -> None:
        self._closed = True
        workers, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
