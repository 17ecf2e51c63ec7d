#!/usr/bin/env bash
# The GPU gate: uncover's parity gate, bench_cache and bench_patching on a CUDA device, in one script.
#
# Two steps, from the repository root:
#
#   1. here, once (CPU; writes build/gpu-carry, ~4 MB: the embedded model's config and tokenizer):
#        bash benchmarks/gpu_gate.sh --prepare
#   2. on the GPU machine (the `device` tool's run, with carry ["build/gpu-carry"], timeout_s 600):
#        bash benchmarks/gpu_gate.sh
#
# Step 2 needs no network: it makes a venv on top of the machine's own python3 (its CUDA torch,
# transformers and accelerate) holding this checkout's src/, then runs
#   - benchmarks/gpu_gate.py: every tiny family × sdpa/eager (flash attention when flash_attn is
#     installed) × float32/bfloat16 with pattern hooks, and a device_map split (GPU, CPU offload, disk);
#   - bench_cache.py and bench_patching.py with --device cuda on a model of SmolLM2-135M's architecture
#     and tokenizer with random weights (its 98 MB GGUF cannot travel: times are the real model's, the
#     patching grid values are not);
# and copies the logs, gpu_gate.md and the updated BENCHMARKS.md (GPU sections named after the card) to
# $OUT (or build/gpu-gate-out). Paste those sections into BENCHMARKS.md here. About 4 minutes on an H100.
# Exit status: 0 when every check passed and both benchmarks ran.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARRY="$ROOT/build/gpu-carry"

if [ "${1:-}" = "--prepare" ]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    mkdir -p "$CARRY"
    "$PY" - "$CARRY" <<'EOF'
import shutil, sys
from pathlib import Path
from uncover.models.load import embedded_gguf, gguf_entry

entry, out = gguf_entry(embedded_gguf()), Path(sys.argv[1])
for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    if (entry / name).is_file():
        shutil.copy(entry / name, out / name)
print(f"prepared {out}: {sorted(p.name for p in out.iterdir())}; now run on the GPU machine, carrying build/gpu-carry:")
print("    bash benchmarks/gpu_gate.sh")
EOF
    exit $?
fi

OUTDIR="${OUT:-$ROOT/build/gpu-gate-out}"
mkdir -p "$OUTDIR"
export UNCOVER_CACHE=/tmp/uncover-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
PY="${PYTHON:-python3}"
VENV="${GATE_VENV:-/tmp/uncover-gpu-venv}"
DEVICE="${GATE_DEVICE:-cuda}"   # GATE_DEVICE=cpu GATE_REPEATS=1 GATE_KINDS=llama: a dry run of the plumbing here
REPEATS="${GATE_REPEATS:-20}"
KINDS="${GATE_KINDS:-}"
NORECORD=""; [ "$DEVICE" = cpu ] && NORECORD="--no-record"   # a dry run leaves BENCHMARKS.md alone
# The venv sees the machine python's packages (its CUDA torch, transformers, accelerate: that python is often a
# venv itself, so --system-site-packages would not reach them; a .pth file does) and this checkout's src/.
[ -x "$VENV/bin/python" ] || "$PY" -m venv --without-pip "$VENV" || exit 2
V="$VENV/bin/python"
SITE="$("$V" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -c 'import site, sysconfig; print("\n".join([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]))' \
    >"$SITE/machine-site.pth"
echo "$ROOT/src" >"$SITE/uncover-src.pth"
"$V" -c "import torch, transformers, accelerate, uncover; dev = '$DEVICE';
assert dev == 'cpu' or torch.cuda.is_available(), 'no CUDA device';
print('gpu_gate:', torch.cuda.get_device_name() if dev != 'cpu' else 'CPU dry run', '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| accelerate', accelerate.__version__)" || exit 2
status=0

echo "== parity gate on CUDA"
timeout 200 "$V" benchmarks/gpu_gate.py --device "$DEVICE" ${KINDS:+--kinds "$KINDS"} --out "$OUTDIR" 2>&1 | tee "$OUTDIR/gpu_gate.log" || status=1

if [ -f "$CARRY/config.json" ] && [ -f "$CARRY/tokenizer.json" ]; then
    MODEL=/tmp/uncover-gpu-model
    "$V" - "$CARRY" "$MODEL" <<'EOF' || status=1
import shutil, sys
from pathlib import Path
import torch, transformers as T

carry, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = T.AutoModelForCausalLM.from_config(T.AutoConfig.from_pretrained(carry), dtype=torch.float32)
model.save_pretrained(out)
for p in carry.iterdir():
    if p.name != "config.json":
        shutil.copy(p, out / p.name)
print(f"random-weight {model.config.model_type} model, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
      f"parameters, at {out}")
EOF
    echo "== bench_cache --device $DEVICE"
    timeout 260 "$V" benchmarks/bench_cache.py --device "$DEVICE" --model "$MODEL" --repeats "$REPEATS" \
        --warmup "$((REPEATS < 3 ? REPEATS : 3))" --timeout 120 $NORECORD \
        2>&1 | tee "$OUTDIR/bench_cache.log" || status=1
    echo "== bench_patching --device $DEVICE"
    timeout 100 "$V" benchmarks/bench_patching.py --device "$DEVICE" --model "$MODEL" \
        --repeats "$((REPEATS < 5 ? REPEATS : 5))" $NORECORD \
        2>&1 | tee "$OUTDIR/bench_patching.log" || status=1
else
    echo "gpu_gate: $CARRY is missing: run 'bash benchmarks/gpu_gate.sh --prepare' on the CPU machine and carry" \
        "build/gpu-carry; benchmarks skipped" | tee "$OUTDIR/bench_skipped.log"
    status=1
fi
cp BENCHMARKS.md "$OUTDIR/BENCHMARKS.md"
echo "gpu_gate: done, status $status; results in $OUTDIR"
exit $status
