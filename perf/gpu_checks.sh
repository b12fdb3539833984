#!/usr/bin/env bash
# The prepared GPU checks, for a session that has a GPU: run first, as one command.
#   bash perf/gpu_checks.sh [LOG_DIR]          (LOG_DIR default: $OUT or ./gpu-checks)
# 1. builds the three CUDA extensions in parallel (into $CELLSYNTH_OPS_CACHE);
# 2. the CUDA tests (tests/stylegan3/test_ops_cuda.py and the CUDA augmentation test);
# 3. perf/ops_bench.py at stylegan3-t 128x128 shapes (one JSON line per case on stderr, so a
#    time limit still leaves the cases it measured);
# 4. training speed (s/kimg) of stylegan3-t at 128x128, batch 32, the official network size
#    (official: 27.2 s/kimg on one A100), with the CUDA ops and with the pure-PyTorch ops, each
#    profiled for 2 steps; and of the stylegan2 config that the shipped mask generator trains.
# Each step has its own time limit; the whole script takes at most about 7 minutes.
L=${1:-${OUT:-gpu-checks}}
mkdir -p "$L"
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export CELLSYNTH_OPS_CACHE=${CELLSYNTH_OPS_CACHE:-/tmp/cellsynth-ops}
PY=${PYTHON:-python3}
T0=$(date +%s)
el() { echo "[t=$(($(date +%s) - T0))s] $*" | tee -a "$L/timeline.txt"; }
el "start: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)"
pids=""
for n in bias_act upfirdn2d filtered_lrelu; do
  timeout 240 $PY -c "from cellsynth.stylegan3.ops import cuda_build as c; c.build('$n'); print('built $n')" \
    >"$L/build_$n.log" 2>&1 &
  pids="$pids $!"
done
wait $pids
el "CUDA ops built: $(cat "$L"/build_*.log | grep -c '^built')/3"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/stylegan3/test_ops_cuda.py \
  tests/stylegan3/test_sg3_training.py -k "cuda or resample" >"$L/tests.log" 2>&1
el "tests rc=$? ($(tail -1 "$L/tests.log"))"
timeout 90 $PY perf/ops_bench.py --res 128 --batch 32 --iters 5 --warmup 2 \
  >"$L/ops_bench.json" 2>"$L/ops_bench_cases.jsonl"
el "ops_bench rc=$? ($(wc -l <"$L/ops_bench_cases.jsonl") cases)"
timeout 150 $PY perf/sg3_train_speed.py --device cuda --cfg stylegan3-t --res 128 --batch 32 \
  --cbase 32768 --cmax 512 --zw 512 --steps 4 --profile 2 --modes fast-fp16,ref \
  >"$L/speed_sg3t128.jsonl" 2>&1
el "sg3-t 128 speed rc=$?"
timeout 90 $PY perf/sg3_train_speed.py --device cuda --cfg stylegan2 --res 64 --batch 64 \
  --cbase 16384 --cmax 256 --zw 512 --steps 8 --profile 2 --modes fast-fp16,ref \
  >"$L/speed_sg2_64.jsonl" 2>&1
el "sg2 64 speed rc=$?"
