"""The python grader's sandbox worker: runs user ``grade(sample, item)`` code in its own process.

Started by ``python_grader`` as ``python -I -B _sandbox_worker.py`` (standard library only, nothing
from this package, so it starts in tens of milliseconds), usually inside fresh network and PID
namespaces (``unshare``). It talks length-prefixed JSON over copies of its stdin/stdout; the real
fds 0/1/2 are pointed at /dev/null so user ``print()`` or ``input()`` cannot touch the protocol.

Before any user code runs it sets its limits: address space (``RLIMIT_AS``), no core files, a file
size cap, and a CPU-time soft limit per call (``RLIMIT_CPU``, raised again before each call up to a
lifetime hard limit; ``SIGXCPU`` raises :class:`CpuTimeExceeded`, a ``BaseException`` so that user
``except Exception`` does not swallow it); and it installs an audit hook (which Python code cannot
remove) that refuses sockets, subprocesses, fork/exec, signals to other processes, importing ctypes or
a fresh ``_posixsubprocess`` (ways to the OS that raise no audit event of their own; the loaded one
has its ``fork_exec`` replaced) and opening another
process's /proc files (the operator's environ). Files elsewhere can be read and written within the
file size cap: run the operator with a read-only root filesystem, as the chart does. The parent
enforces the wall-clock limit and kills the whole process group.

Messages: the first from the parent is the config (``source``, ``filename``, ``cpu_seconds``,
``memory_bytes``, ``lifetime_cpu_seconds``); the worker answers ``{"ready": true}`` or
``{"ready": false, "error": ...}``. Then each request ``{"sample": ..., "item": ...}`` gets
``{"ok": true, "score": x}`` or ``{"ok": false, "error": ...}``, plus ``"recycle": true`` when this
worker should be replaced (its CPU lifetime is nearly spent).
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024
MAX_ERROR_CHARS = 500

_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "pty.")
_BLOCKED_EVENTS = frozenset({"os.system", "os.kill", "os.killpg", "signal.pthread_kill", "os.forkpty"})
#: modules that reach the OS without an audit event of their own: ctypes (``CDLL(None)`` is libc:
#: ``system``, ``socket``, ``connect``) and ``_posixsubprocess.fork_exec`` (no event on 3.11)
_BLOCKED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})


class CpuTimeExceeded(BaseException):
    """Raised inside user code when the call's CPU-time limit is reached."""


class SandboxViolation(PermissionError):
    """Raised by the audit hook for an operation the sandbox does not allow."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
        what = "network access" if event.startswith("socket.") else f"{event}"
        raise SandboxViolation(f"{what} is blocked in the python grader sandbox")
    if event == "import" and args and str(args[0]).split(".")[0] in _BLOCKED_MODULES:
        raise SandboxViolation(f"importing {args[0]} is blocked in the python grader sandbox")
    if event.startswith("ctypes."):
        raise SandboxViolation("native code through ctypes is blocked in the python grader sandbox")
    if event == "open" and args and _other_process(args[0]):
        raise SandboxViolation("reading other processes' /proc files is blocked in the python grader sandbox")


def _no_fork_exec(*args: object, **kwargs: object) -> None:
    raise SandboxViolation("_posixsubprocess.fork_exec is blocked in the python grader sandbox")


def _disable_fork_exec() -> None:
    """Load ``_posixsubprocess`` now, with ``fork_exec`` replaced, so that ``import subprocess`` and
    ``import asyncio`` still work for graders while the one entry point that starts a program without
    an audit event (on 3.11) is gone; the hook refuses loading a fresh copy of the module."""
    import _posixsubprocess

    setattr(_posixsubprocess, "fork_exec", _no_fork_exec)  # noqa: B010 (a module attribute mypy types)


#: this worker's directory in the /proc it sees (in a PID namespace without its own /proc mount,
#: ``os.getpid()`` is not the number /proc knows it by)
_OWN_PROC = os.path.realpath("/proc/self")


def _other_process(path: object) -> bool:
    """A path under /proc/<pid>/ of another process (its environ holds the operator's secrets when no
    PID namespace hides it), symlinks and ``..`` resolved."""
    if isinstance(path, int):
        return False
    try:
        text = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError):
        return False
    parts = text.split(os.sep)
    if len(parts) < 3 or parts[0] != "" or parts[1] != "proc" or not parts[2].isdigit():
        return False
    return os.sep.join(parts[:3]) != _OWN_PROC


# SIGXCPU repeats every second once the soft limit is passed: only raise while user code runs, so
# the worker's own bookkeeping (replying, re-arming) is never interrupted.
_in_user_code = False


def _on_xcpu(signum: int, frame: object) -> None:
    if _in_user_code:
        raise CpuTimeExceeded()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(stream: IO[bytes]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    return json.loads(_read_exact(stream, size))


def _send(stream: IO[bytes], message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _arm_cpu(cpu_seconds: float, hard: int) -> None:
    global _in_user_code
    # RLIMIT_CPU counts whole seconds of the process's total: round to the nearest, at least 1 more.
    used = _cpu_used()
    soft = min(hard, max(math.floor(used) + 1, round(used + cpu_seconds)))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _in_user_code = True


def _disarm_cpu() -> None:
    global _in_user_code
    _in_user_code = False


def _describe(exc: BaseException, cpu_seconds: float, memory_bytes: int, filename: str) -> str:
    if isinstance(exc, CpuTimeExceeded):
        return f"CPU time limit ({cpu_seconds:g}s) exceeded"
    if isinstance(exc, MemoryError):
        return f"memory limit ({memory_bytes // (1024 * 1024)} MiB) exceeded (MemoryError)"
    if isinstance(exc, SandboxViolation):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if f.filename == filename]
    where = f" (line {user[-1].lineno})" if user else ""
    text = f"{type(exc).__name__}: {exc}{where}"
    return text[:MAX_ERROR_CHARS]


def _validate(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise TypeError(f"grade returned {type(value).__name__}, not a number")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"grade returned {number}")
    return number


def _isolate_stdio() -> tuple[IO[bytes], IO[bytes]]:
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    sys.stderr = sys.stdout
    return proto_in, proto_out


def main() -> None:
    proto_in, proto_out = _isolate_stdio()
    config = _receive(proto_in)
    cpu_seconds = float(config["cpu_seconds"])
    filename = str(config.get("filename") or "<grader>")
    memory_bytes = int(config["memory_bytes"])
    hard_cpu = math.ceil(_cpu_used() + float(config["lifetime_cpu_seconds"]))

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 * 1024, 64 * 1024 * 1024))
    signal.signal(signal.SIGXCPU, _on_xcpu)
    _arm_cpu(cpu_seconds, hard_cpu)
    _disable_fork_exec()
    sys.addaudithook(_audit)

    namespace: dict[str, Any] = {"__name__": "grader", "__builtins__": __builtins__}
    grade: Callable[[Any, Any], Any] | None = None
    try:
        code = compile(config["source"], filename, "exec")
        exec(code, namespace)  # the user's grader: what this process exists to run
        candidate = namespace.get("grade")
        if not callable(candidate):
            raise TypeError("the source defines no callable grade(sample, item)")
        grade = candidate
    except BaseException as exc:  # noqa: BLE001 (CpuTimeExceeded included: report, then exit)
        _disarm_cpu()
        _send(proto_out, {"ready": False, "error": _describe(exc, cpu_seconds, memory_bytes, filename)})
        return
    _disarm_cpu()
    _send(proto_out, {"ready": True})

    while True:
        try:
            request = _receive(proto_in)
        except EOFError:
            return
        reply: dict[str, Any]
        try:
            _arm_cpu(cpu_seconds, hard_cpu)
            score = _validate(grade(request.get("sample"), request.get("item")))
            _disarm_cpu()
            reply = {"ok": True, "score": score}
        except BaseException as exc:  # noqa: BLE001 (any failure of user code is a result)
            _disarm_cpu()
            reply = {"ok": False, "error": _describe(exc, cpu_seconds, memory_bytes, filename)}
        if _cpu_used() + 2 * cpu_seconds + 1 > hard_cpu:
            reply["recycle"] = True
        _send(proto_out, reply)
        if reply.get("recycle"):
            return


if __name__ == "__main__":
    main()
