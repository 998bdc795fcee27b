#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on an H100/H200): builds the base-shaped demo store, runs the engine and service
# benchmarks in float32, float16 and bfloat16, and prints one summary table. Results land in ${OUT:-benchmarks/results}.
#   bash benchmarks/gpu_check.sh            (from the repository root, with the project installed in .venv or python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT_DIR=${OUT:-benchmarks/results}
STORE=${STORE:-/tmp/xnli-gpu-store}
XNLI=${XNLI_DIR:-../shared/data/xnli}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m app build-demo-store --out "$STORE" --size base --variant xlmr-mnli --variant xlmr-squad-mnli
for dtype in float32 float16 bfloat16; do
  catalogue="$STORE/variants-$dtype.toml"
  sed -e "s/^dtype = \"auto\".*/dtype = \"$dtype\"/" -e 's/^device = "auto".*/device = "cuda"/' \
      -e 's/^max_batch_size = 32.*/max_batch_size = 64/' -e 's/^max_batch_tokens = 8192.*/max_batch_tokens = 16384/' \
      "$STORE/variants.toml" > "$catalogue"
  "$PY" - "$catalogue" <<'PY'
import sys, tomllib
raw = tomllib.loads(open(sys.argv[1]).read())
keep = {"xlmr-mnli", "xlmr-squad-mnli"}
lines = open(sys.argv[1]).read().split("\n[[variant]]")
open(sys.argv[1], "w").write(lines[0] + "".join("\n[[variant]]" + part for part in lines[1:] if any(f'name = "{k}"' in part for k in keep)))
PY
  timeout 140 "$PY" -m benchmarks.service --catalogue "$catalogue" --variant xlmr-mnli --fair-variant xlmr-squad-mnli \
      --data "$XNLI" --pairs 2048 --concurrency 1,64,256 --seconds 8 --engine-batch-sizes 1,8,32,64,128 \
      --out "$OUT_DIR/gpu-$dtype.json" | tee "$OUT_DIR/gpu-$dtype.log" || echo "run for $dtype failed or timed out"
done
"$PY" -m benchmarks.summary "$OUT_DIR"/gpu-*.json
