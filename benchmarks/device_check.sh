#!/usr/bin/env bash
# One short check of this machine's accelerator (or CPU): parity tests, a LoRA and a QLoRA run,
# step time, tokens/s and model FLOP utilisation, written to JSON (benchmarks/device_check.py).
#
#   bash benchmarks/device_check.sh [out.json]      # default benchmarks/results/device_check.json
#
# Uses .venv when there is one (make test creates it; for a GPU also: .venv/bin/pip install
# -e '.[cuda]'), else the python3 on PATH. Exits non-zero when any part failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" -m benchmarks.device_check --out "${1:-benchmarks/results/device_check.json}"
