"""``bench/gpu_check.sh``, the prepared GPU job, where it cannot run: no arguments print its usage
(exit 2); ``run`` on a machine whose torch sees no CUDA device stops before any test or benchmark
with one line saying so (a run lent no GPU spends nothing and says why).

The script runs from a copy in a temporary tree (it works relative to its own folder), so it
neither installs this checkout's ``.whl/`` wheels nor writes into ``bench/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def _run(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tree / "bench").mkdir(exist_ok=True)
    shutil.copy(SCRIPT, tree / "bench" / "gpu_check.sh")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(tree / "bench" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_without_arguments_it_prints_its_usage_and_exits_2(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 2
    assert "bench/gpu_check.sh prepare" in result.stdout and "bench/gpu_check.sh run OUT" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the script would run the real GPU checks")
def test_run_without_a_cuda_device_stops_before_running_anything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(tmp_path, "run", str(out))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "no CUDA device: nothing to check"
    assert out.is_dir() and list(out.iterdir()) == []


def test_run_without_an_output_folder_names_the_usage(tmp_path: Path) -> None:
    result = _run(tmp_path, "run")
    assert result.returncode != 0
    assert "usage: bench/gpu_check.sh run OUT" in result.stderr
