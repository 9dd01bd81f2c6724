"""Bad redaction flags stop the collector before it listens, with a one-line error naming the problem.

Covers: an unknown built-in detector name lists the known ones; an invalid custom regex names the
pattern; both exit non-zero.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(
            ["--redact", "emial"], "unknown redaction builtin 'emial'; known builtins:", id="builtin"
        ),
        pytest.param(["--redact-pattern", "(["], "redaction pattern '([' is not a valid regular", id="regex"),
    ],
)
def test_bad_redaction_flags_fail_with_one_line(tmp_path: Path, flags: list[str], expected: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_op.cli",
            "collector",
            "--store",
            f"sqlite:///{tmp_path / 'e.db'}",
            "--port",
            "0",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: collector redaction: ") and expected in lines[0]
