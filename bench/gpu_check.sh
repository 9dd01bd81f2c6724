#!/usr/bin/env bash
# The GPU checks, as one prepared run for a machine with a CUDA device (see bench/RESULTS.md,
# "## Trainer on a GPU"): the gpu-marked tests, then the trainer benchmark with --record.
#
#   bench/gpu_check.sh prepare   # here: fetch the wheels the GPU image lacks into .whl/ (py3.12)
#   bench/gpu_check.sh run OUT   # there: install .whl/ if present, run both, copy logs and
#                                # bench/RESULTS.md into OUT
#
# The GPU image used on 2026-12-04 (Python 3.12, torch 2.11 + CUDA 13, transformers 5.17, peft
# 0.21.0) had everything but pydantic, orjson and jsonschema; `prepare` fetches those at the
# versions of this checkout's .venv. The run took about 4 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pydantic pydantic-core annotated-types typing-inspection orjson jsonschema
  jsonschema-specifications referencing rpds-py jsonpointer)

case "${1:-}" in
prepare)
  pins=()
  for name in "${WHEELS[@]}"; do
    pins+=("$(.venv/bin/pip list --format=freeze 2>/dev/null | grep -i "^${name//-/[-_]}==")")
  done
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
  ls .whl
  ;;
run)
  out="${2:?usage: bench/gpu_check.sh run OUT}"
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
  status=0
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/e2e/test_trainer_gpu.py \
    tests/unit/test_trainer_packing.py tests/unit/test_trainer_adapter_casts.py \
    > "$out/pytest.log" 2>&1 || status=$?
  tail -3 "$out/pytest.log"
  timeout 300 python3 bench/bench_trainer.py --config gpu --steps 60 --repeat 2 --record \
    > "$out/bench.log" 2>&1 || status=$?
  tail -20 "$out/bench.log"
  cp bench/RESULTS.md "$out/RESULTS.md"
  exit "$status"
  ;;
*)
  sed -n '2,11p' "$0"
  exit 2
  ;;
esac
