#!/usr/bin/env bash
# The prepared GPU check: one device call, under 8 minutes on an H100/H200 (GPU_CHECK_BUDGET_S, default 420 s).
#
#   here, once:   python benchmarks/gpu_wheels.py download --xnli ../shared/data/xnli   (.whl/ and .xnli/, git-ignored)
#   device call:  carry [".whl", ".xnli"], command `bash benchmarks/gpu_check.sh`, timeout_s 540
#   CPU proof:    GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZES=tiny PYTHON=/tmp/gpu-image-312/bin/python OUT=/tmp/gpu-check-cpu \
#                     bash benchmarks/gpu_check.sh       (python from `gpu_wheels.py image-venv`: only what the image has)
#
# The GPU image reaches no registry and lacks the web stack, so the carried wheels are installed with --no-index
# --no-deps --target and checked (benchmarks/gpu_wheels.py check); the project runs from this source tree. Then: the
# GPU and versions; the demo stores, base and large, with the tokenizer trained on the XNLI pairs (realistic lengths:
# about 58 tokens per pair); and for each dtype (float16, bfloat16, float32) and size, benchmarks.service: the engine
# sweep in-process, then a real server driven by single-pair clients (1 and many) and 16-pair clients; after the first
# run, its engine sweep again with each graph of GPU_CHECK_GRAPHS (default cuda-graphs on CUDA, none on the CPU; at
# most 75 s each: the budget's last run may be skipped for it), e.g. "cuda-graphs compile", over at most
# GPU_CHECK_GRAPH_BUCKETS (rows, length) buckets (default 32); then, once, the device worker's stage pipeline off vs on
# (benchmarks.pipeline, GPU_CHECK_PIPELINE_LOADS) and single-pair requests/s through 1 and N front-end processes
# (benchmarks.frontend). Each phase runs
# under a time limit and a run that no longer fits the budget is skipped and said so. $OUT (at most 8 files come back)
# gets gpu_check.log (everything printed), summary.md (the table, rewritten after each run) and results.tar.gz (each
# run's JSON, its log and its server's log, repacked after each run).
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
START=$SECONDS
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results/gpu}
WORK=${GPU_CHECK_WORK:-/tmp/xnli-gpu-check}
STORE=${STORE:-/tmp/xnli-gpu-store}
SITE=${SITE:-/tmp/xnli-site}
WHEELS=${WHEELS:-.whl}
XNLI=${XNLI_DIR:-$( [ -d .xnli ] && echo .xnli || echo ../shared/data/xnli )}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZES=${GPU_CHECK_SIZES:-base large}
DTYPES=${GPU_CHECK_DTYPES:-float16 bfloat16 float32}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
GRAPHS=${GPU_CHECK_GRAPHS-$( [ "$DEVICE" = cuda ] && echo cuda-graphs )}  # engine sweeps again with these, once
if [ "$DEVICE" = cpu ]; then  # the CPU proof: tiny shapes, short phases
  BATCHES=1,8,32; ENGINE_S=1; CONC=1,8; CONC16=4; SECONDS_EACH=2; CLIENTS=2; PAIRS=256; RUN_LIMIT=150
  MAX_BATCH=32; MAX_TOKENS=8192; PIPELINE_LOADS=${GPU_CHECK_PIPELINE_LOADS-1x8,16x4}
  FRONTENDS=${GPU_CHECK_FRONTENDS:-1,2}; FRONT_CONC=8
else
  BATCHES=1,16,64,128,256,512; ENGINE_S=1.5; CONC=1,256; CONC16=32; SECONDS_EACH=4; CLIENTS=6; PAIRS=4096
  RUN_LIMIT=100; MAX_BATCH=256; MAX_TOKENS=32768; PIPELINE_LOADS=${GPU_CHECK_PIPELINE_LOADS-1x64,16x32}
  FRONTENDS=${GPU_CHECK_FRONTENDS:-1,8,16}; FRONT_CONC=256
fi
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TMPDIR=${TMPDIR:-/tmp}
say() { echo "[gpu_check +$((SECONDS - START))s] $*"; }
left() { echo $((BUDGET - (SECONDS - START))); }

main() {  # everything it prints goes to $OUT/gpu_check.log too (see the end)
say "installing the carried wheels ($WHEELS) into $SITE"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || { say "wheel install failed"; exit 1; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  timeout 120 "$PY" benchmarks/gpu_wheels.py check --dest "$WHEELS" || { say "the environment is incomplete"; exit 1; }
else
  say "no wheels in $WHEELS: using $PY's own packages"
fi

say "machine"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader
"$PY" - <<'PY'
import os, platform, torch, transformers, tokenizers, fastapi, pydantic, uvicorn
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, transformers {transformers.__version__}, tokenizers "
      f"{tokenizers.__version__}, fastapi {fastapi.__version__}, pydantic {pydantic.__version__}, "
      f"uvicorn {uvicorn.__version__}; {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}: {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
          f"compute capability {props.major}.{props.minor}")
else:
    print("GPU: none visible to torch")
PY
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "no CUDA device: nothing to measure (GPU_CHECK_DEVICE=cpu runs the CPU proof)"; exit 1
fi

TOKENIZER=${GPU_CHECK_TOKENIZER_FROM:-$XNLI/demo-tokenizer}  # trained here by gpu_wheels.py download --xnli
first=""
for size in $SIZES; do
  if [ -z "$first" ] && [ -f "$TOKENIZER/tokenizer.json" ]; then
    tokenizer=(--tokenizer-from "$TOKENIZER")
  elif [ -z "$first" ]; then
    tokenizer=(--tokenizer-corpus "$XNLI")
  else
    tokenizer=(--tokenizer-from "$STORE/$first/xlmr-mnli")
  fi
  say "building the $size demo store (${tokenizer[*]})"
  timeout 300 "$PY" -m app build-demo-store --out "$STORE/$size" --size "$size" --variant xlmr-mnli --force \
    "${tokenizer[@]}" || { say "building the $size store failed"; exit 1; }
  first=${first:-$size}
done

catalogue() {  # size dtype [graph] -> the store's catalogue with xlmr-mnli alone, on $DEVICE in that dtype, GPU-sized
  # batches, run eagerly or as the graph says (variants-<dtype>-<graph>.toml)
  "$PY" - "$STORE/$1/variants.toml" "$STORE/$1/variants-$2${3:+-$3}.toml" "$DEVICE" "$2" "$MAX_BATCH" "$MAX_TOKENS" \
    "${3:-eager}" <<'PY'
import os, re, sys
source, target, device, dtype, batch, tokens, graph = sys.argv[1:]
text = open(source, encoding="utf-8").read()
head, *blocks = text.split("\n[[variant]]")
buckets = os.environ.get("GPU_CHECK_GRAPH_BUCKETS") or "32"  # most (rows, length) buckets a graph builds
for key, value in (("device", f'"{device}"'), ("dtype", f'"{dtype}"'), ("max_batch_size", batch),
                   ("max_batch_tokens", tokens), ("max_queue_pairs", "8192"), ("graph", f'"{graph}"'),
                   ("graph_buckets", buckets)):
    head, count = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", head)
    if count == 0 and key.startswith("graph"):  # a store built before the catalogue listed it
        head, count = re.subn(r"(?m)^\[defaults\]$", f"[defaults]\n{key} = {value}", head)
    assert count == 1, key
keep = [block for block in blocks if re.search(r'(?m)^name = "xlmr-mnli"$', block)]
open(target, "w", encoding="utf-8").write(head + "".join("\n[[variant]]" + block for block in keep))
PY
  cp "$STORE/$1/variants-$2${3:+-$3}.toml" "$WORK/variants-$1-$2${3:+-$3}.toml"
}

graphs() {  # size dtype: the engine sweep of the run just made (eager) again with each graph of $GRAPHS, once
  local name="$1-$2" graph limit
  for graph in $GRAPHS; do
    limit=$(( $(left) < 75 ? $(left) : 75 ))
    if [ "$limit" -lt 40 ]; then say "SKIPPED graph $graph on $name: $(left) s left"; continue; fi
    catalogue "$1" "$2" "$graph" || { say "catalogue for $name $graph failed"; continue; }
    say "engine $name with graph = $graph (limit ${limit} s; compare with the engine sweep of run $name)"
    timeout -k 5 "$limit" "$PY" -m benchmarks.engine --catalogue "$STORE/$1/variants-$2-$graph.toml" \
      --variant xlmr-mnli --data "$XNLI" --pairs "$PAIRS" --batch-sizes "$BATCHES" \
      --seconds-per-batch-size "$ENGINE_S" --out "$WORK/engine-$name-$graph.json" 2>&1 | tee "$WORK/engine-$name-$graph.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || say "engine $name with graph $graph failed or timed out; see engine-$name-$graph.log"
  done
  GRAPHS=""  # the first run's shape only (base float16 by default)
}

pipeline() {  # size dtype: the device worker's stage pipeline off vs on, in-process, interleaved rounds, once
  local name="$1-$2" limit=$(( $(left) < 60 ? $(left) : 60 ))
  if [ "$limit" -lt 30 ]; then say "SKIPPED worker pipeline on $name: $(left) s left"; PIPELINE_LOADS=""; return; fi
  say "worker pipeline off vs on, $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$PY" -m benchmarks.pipeline --catalogue "$STORE/$1/variants-$2.toml" --variant xlmr-mnli \
    --data "$XNLI" --pairs "$PAIRS" --loads "$PIPELINE_LOADS" --rounds 2 --out "$WORK/pipeline-$name.json" 2>&1 \
    | tee "$WORK/pipeline-$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || say "worker pipeline on $name failed or timed out; see pipeline-$name.log"
  PIPELINE_LOADS=""  # the first run's shape only
}

frontends() {  # size dtype: single-pair requests/s through 1 and N front-end processes (app.multiprocess), once
  local name="$1-$2" limit=$(( $(left) < 150 ? $(left) : 150 ))
  if [ "$limit" -lt 60 ]; then say "SKIPPED front ends on $name: $(left) s left"; return; fi
  say "front ends $FRONTENDS on $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$PY" -m benchmarks.frontend --catalogue "$STORE/$1/variants-$2.toml" --variant xlmr-mnli \
    --data "$XNLI" --pairs "$PAIRS" --frontends "$FRONTENDS" --concurrency "$FRONT_CONC" --client-processes "$CLIENTS" \
    --seconds "$SECONDS_EACH" --out "$WORK/frontend-$name.json" 2>&1 | tee "$WORK/frontend-$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || say "front ends on $name failed or timed out; see frontend-$name.log"
  cp "$TMPDIR"/xnli-bench-frontend-*.log "$WORK/" 2> /dev/null
  FRONTENDS=""  # the first run's shape only: the budget is for the engine runs
}

summarise() {
  "$PY" -m benchmarks.summary "$WORK"/gpu-*.json > "$OUT_DIR/summary.md" 2>&1
  tar czf "$OUT_DIR/results.tar.gz" -C "$WORK" . 2> /dev/null
}

for dtype in $DTYPES; do
  for size in $SIZES; do
    name="$size-$dtype"
    limit=$(( $(left) < RUN_LIMIT ? $(left) : RUN_LIMIT ))
    if [ "$limit" -lt 40 ]; then
      say "SKIPPED $name: $(left) s left of the ${BUDGET} s budget"; continue
    fi
    catalogue "$size" "$dtype" || { say "catalogue for $name failed"; continue; }
    say "run $name (limit ${limit} s)"
    timeout -k 5 "$limit" "$PY" -m benchmarks.service --catalogue "$STORE/$size/variants-$dtype.toml" --variant xlmr-mnli \
      --data "$XNLI" --pairs "$PAIRS" --engine-batch-sizes "$BATCHES" --engine-seconds-per-batch-size "$ENGINE_S" \
      --concurrency "$CONC" --batched-concurrency "$CONC16" --seconds "$SECONDS_EACH" --warmup-seconds 2 \
      --floor-seconds 0 --client-processes "$CLIENTS" --out "$WORK/gpu-$name.json" 2>&1 | tee "$WORK/run-$name.log"
    status=${PIPESTATUS[0]}
    cp "$TMPDIR/xnli-bench-server.log" "$WORK/server-$name.log" 2> /dev/null
    [ "$status" -eq 0 ] || say "run $name failed or timed out (exit $status); see run-$name.log, server-$name.log"
    [ -z "$GRAPHS" ] || graphs "$size" "$dtype"
    [ -z "$PIPELINE_LOADS" ] || pipeline "$size" "$dtype"
    [ -z "$FRONTENDS" ] || frontends "$size" "$dtype"
    summarise
  done
done
summarise
say "summary ($(left) s of the budget left)"
cat "$OUT_DIR/summary.md"
}

main 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
