#!/usr/bin/env bash
# Every GPU measurement of DoRA's cost against LoRA, in one call of under 8 minutes (an H100 / H200 with PyTorch,
# transformers, PEFT and Triton installed; run from the repository root):
#
#   bash scripts/bench_dora_gpu.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else bench_gpu/
#
# Parts, most important first, each under its own time limit; a part that would start after BUDGET_S seconds is
# skipped (and says so), so the whole run stays inside the budget. Each writes OUT_DIR/<part>.json (every number,
# see scripts/bench_adapters.py) and OUT_DIR/<part>.log; the tables are printed at the end.
#   env        GPU, versions, and the measured bf16 matmul rate (8192^3, random data)
#   kernels    every CUDA-only test (the fused Triton kernels, bf16 autocast against float64): the six the CPU suite skips
#   1b_eager   ~1B Llama-style, bf16, batch 4 x 1024: mmft LoRA / DoRA / DoRA without the fused kernels, PEFT LoRA /
#              DoRA; GPU busy time per step from the profiler; unmerged and merged eval
#   1b_cudagraphs     the same, torch.compile(mode="reduce-overhead") per decoder layer (CUDA graphs), training only
#   7b_eager / 7b_cudagraphs   four layers of Llama-2-7B's shape, the same two ways
#   1b_compiled       torch.compile default mode (inductor fusion, no CUDA graphs), mmft LoRA / DoRA
set -u
OUT_DIR=${1:-${OUT:-bench_gpu}}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
START=$SECONDS
BENCH="$PY scripts/bench_adapters.py --preset"
FOUR="mmft_lora mmft_dora peft_lora peft_dora"

part() {  # part NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local elapsed=$((SECONDS - START))
  if (( elapsed + limit / 2 > BUDGET_S )); then
    echo "== $name: skipped ($elapsed s used of the $BUDGET_S s budget)" | tee "$OUT_DIR/$name.log"; return
  fi
  echo "== $name (limit ${limit}s, at ${elapsed}s)"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $((SECONDS - START - elapsed))s"
  (( rc == 0 )) || tail -n 25 "$OUT_DIR/$name.log"
}

part env 60 $PY - "$OUT_DIR/env.json" <<'PYEOF'
import json, subprocess, sys, torch, transformers, peft, triton
dev = torch.cuda.get_device_name()
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    a @ b
end.record(); torch.cuda.synchronize()
tflops = 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
info = {"device": dev, "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "peft": peft.__version__, "triton": triton.__version__, "bf16_matmul_tflops_measured": tflops, "nvidia_smi": smi}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
PYEOF
cat "$OUT_DIR/env.log"
part kernels 120 $PY -m pytest -q -rs -p no:cacheprovider tests/test_dora_kernels.py tests/test_adapter_math.py -k cuda
tail -n 3 "$OUT_DIR/kernels.log"
part 1b_eager 120 $BENCH 1b --rounds 10 --profile --variants $FOUR mmft_dora_unfused --json "$OUT_DIR/1b_eager.json"
part 1b_cudagraphs 150 $BENCH 1b --rounds 10 --warmup 3 --profile --no-eval --compile reduce-overhead \
  --variants $FOUR --json "$OUT_DIR/1b_cudagraphs.json"
part 7b_eager 80 $BENCH 7b-stack --rounds 10 --profile --no-eval --variants $FOUR mmft_dora_unfused \
  --json "$OUT_DIR/7b_eager.json"
part 7b_cudagraphs 120 $BENCH 7b-stack --rounds 10 --warmup 3 --no-eval --compile reduce-overhead \
  --variants $FOUR --json "$OUT_DIR/7b_cudagraphs.json"
part 1b_compiled 120 $BENCH 1b --rounds 10 --warmup 2 --no-eval --compile --variants mmft_lora mmft_dora \
  --json "$OUT_DIR/1b_compiled.json"

echo; echo "== tables (total ${SECONDS}s)"
for name in 1b_eager 1b_cudagraphs 7b_eager 7b_cudagraphs 1b_compiled; do
  [ -f "$OUT_DIR/$name.json" ] || continue
  echo "-- $name"
  sed -n '/^| variant/,$p' "$OUT_DIR/$name.log" | grep -v -e "detach" -e "saved bytes" -e "train peak" -e "merged/base"
done
